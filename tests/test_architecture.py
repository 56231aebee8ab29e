"""The package's layering, read from its source: imports at module level only, no import
cycles, inference and parallel/ free of training code, and no file speaking of the project's
own work history."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sora_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, module: str) -> list[str]:
    """The sora_jax modules an import statement names (`from a import b` names a.b when that
    is a module, else a)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the importing package
            pkg = module.split(".")
            if not MODULES[module].name == "__init__.py":
                pkg = pkg[:-1]
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    else:
        return []
    return [n for n in names if n == "sora_jax" or n.startswith("sora_jax.")]


def _graph() -> dict[str, set[str]]:
    """Module -> the sora_jax modules it imports at module level."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            deps.update(d for d in _imported(node, name) if d in MODULES and d != name)
        graph[name] = deps
    return graph


def _closure(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_sora_jax_import_inside_a_function():
    """Imports inside functions hide cycles; only the package's lazy public API may."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if _imported(node, name):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    # The one exception: the lazy public `load_pipeline`.
    assert [f.split(":")[0] for f in found] == ["sora_jax/__init__.py"], found


def test_no_import_cycles():
    graph = _graph()
    cycles = sorted(m for m in graph if m in _closure(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("room", ["sora_jax.inference", "sora_jax.parallel", "sora_jax.models"])
def test_lower_rooms_never_reach_training(room):
    graph = _graph()
    for name in (m for m in graph if m == room or m.startswith(room + ".")):
        reached = sorted(m for m in _closure(graph, name) if m.startswith("sora_jax.training"))
        assert not reached, f"{name} imports training code (through {reached})"


def test_the_top_level_holds_entry_points_and_the_public_api():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == [
        "__init__",
        "build_dataset",
        "cache_latents",
        "config",
        "curate",
        "evaluate",
        "evaluate_vae",
        "export",
        "plan",
        "prepare",
        "recaption",
        "sample",
        "train",
    ]


# Words of a diary: numbered work items and sessions (spelt so that this file does not match).
HISTORY = re.compile(r"\b(" + "iss" + r"ues?|" + "sess" + r"ions?)\s*#?\d+", re.IGNORECASE)


def test_no_file_refers_to_the_work_history():
    files = [ROOT / "README.md", *ROOT.glob("benchmarks/*"), *ROOT.glob("configs/*.py")]
    files += [*PACKAGE.rglob("*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("notebooks/*.ipynb")]
    found = [
        f"{p.relative_to(ROOT)}:{i + 1}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines())
        if HISTORY.search(line)
    ]
    assert not found, found
