"""The planner: TPU topology names, the compiled-HLO check, the compiled plan CLI."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sora_jax import config as config_lib
from sora_jax.training import planning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "name, kind, bounds",
    [
        ("v5p-8", "v5p", (2, 2, 1)),
        ("v5p-16", "v5p", (2, 2, 2)),
        ("v5p-32", "v5p", (2, 2, 4)),
        ("v4-8", "v4", (2, 2, 1)),
        ("v5e-8", "v5e", (2, 4)),
        ("v5litepod-16", "v5e", (4, 4)),
        ("v6e-8", "v6e", (2, 4)),
        ("v5p:2x2x1", "v5p", (2, 2, 1)),
        ("v5e:2x4", "v5e", (2, 4)),
    ],
)
def test_topology_names(name, kind, bounds):
    t = planning.parse_topology(name)
    assert (t.kind, t.bounds) == (kind, bounds)


@pytest.mark.parametrize("name", ["v5p-12", "v7-8", "v5e-2", "v5p:2x", "tpu"])
def test_bad_topology_names_raise_one_line(name):
    with pytest.raises(ValueError, match="Cloud TPU name") as e:
        planning.parse_topology(name)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not planning.have_libtpu(), reason="needs libtpu (pip install -e '.[tpu]')")
def test_multi_host_topologies_have_every_chip():
    assert len(planning.topology_devices("v5p-16")) == 8
    assert len(planning.topology_devices("v5p-32")) == 16


def test_activation_all_gathers_finds_replicated_activations():
    mesh = jax.make_mesh((8,), ("fsdp",))
    rows, length, d = 8, 64, 16
    split = NamedSharding(mesh, P("fsdp"))
    x = jax.ShapeDtypeStruct((rows, length, d), jnp.float32, sharding=split)
    w = jax.ShapeDtypeStruct((d, d), jnp.float32, sharding=split)
    f = lambda x, w: jnp.tanh(x @ w)
    found = {}
    for name, out in (("replicated", P()), ("split", P("fsdp"))):
        jitted = jax.jit(f, out_shardings=NamedSharding(mesh, out))
        hlo = jitted.lower(x, w).compile().as_text()
        found[name] = planning.activation_all_gathers(hlo, rows, length)
    # The weight's fsdp all-gather ([16, 16]) is not an activation.
    assert found["split"] == []
    assert found["replicated"] == [{"shape": "f32[8,64,16]", "dimensions": "0"}]


def _last_line(args) -> dict:
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    out = subprocess.run(
        [sys.executable, "-m", "sora_jax.plan", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"fits=(yes|no) peak_gib=([0-9.]+) hbm_gib=([0-9.]+)", last)
    assert m, last
    return {"fits": m.group(1), "peak": float(m.group(2)), "hbm": float(m.group(3))}


@pytest.mark.skipif(not planning.have_libtpu(), reason="needs libtpu (pip install -e '.[tpu]')")
def test_plan_cli_compiles_for_a_v5e_slice():
    r = _last_line(["--config=configs/tiny.py", "--topology=v5e-8", "--config.dit.rows=8"])
    assert r["fits"] == "yes" and r["peak"] > 0 and r["hbm"] == 16


@pytest.mark.skipif(not planning.have_libtpu(), reason="needs libtpu (pip install -e '.[tpu]')")
@pytest.mark.parametrize(
    "policy, scan", [("nothing_saveable", True), ("save_block_inputs", False), ("none", False)]
)
def test_estimate_is_within_1_5x_of_the_compiled_peak(policy, scan):
    """A DiT-S-wide step whose activations outweigh its state (4k tokens per chip, v5e-8,
    fsdp 8): the analytic per-chip total is within 1.5x of XLA's peak, for each remat form."""
    c = config_lib.load_with_arg(os.path.join(ROOT, "configs", "dit.py"), "S")
    c.dit.model.depth, c.dit.model.remat_policy, c.dit.model.scan_blocks = 4, policy, scan
    c.dit.rows, c.dit.seq_len = 8, 4096
    c.data.resolutions, c.data.frame_choices = ((256, 256),), (1,)
    target = planning.compile_target("v5e-8")
    c = config_lib.validate(planning.configure_mesh(c, planning.parse_mesh("fsdp:8"), 8))
    p = planning.compiled_plan(c, target)
    ratio = p["per_device"]["total_bytes"] / p["compiled"]["peak_bytes"]
    state = 2 * p["per_device"]["param_bytes"] + p["per_device"]["optimizer_bytes"]
    assert p["per_device"]["activation_bytes_estimate"] > state
    assert 1 / 1.5 <= ratio <= 1.5, (policy, ratio)


@pytest.mark.parametrize(
    "message",
    [
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
        "hbm. Used 97.34G of 95.74G hbm. Exceeded hbm capacity by 1.6G.",
        "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
        "required for HLO temporaries (97.34G) exceeds available HBM (95.73G). HLO module: x.",
    ],
)
def test_out_of_memory_compiles_report_the_size_xla_states(message):
    r = planning._out_of_memory(message, 1.0)
    assert r["oom"] and r["peak_bytes"] == int(97.34 * 2**30)
    assert r["message"].startswith("RESOURCE_EXHAUSTED")
