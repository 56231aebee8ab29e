"""Test set-up: simulate 8 CPU devices before jax is imported anywhere."""

import os
import tempfile

# No LLVM optimisation of XLA's generated CPU code: the suite mostly compiles small programs
# and runs them a few steps, so compile-bound tests run 20-50 % faster; a long training loop
# steps 2-3x slower this way (a 1,100-step micro run breaks even), and float results differ
# slightly from -O2.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the CLIs they start as subprocesses, which inherit the environment) compile
# the same micro-config programs: a persistent compilation cache shared by the whole run
# (both xdist workers included) compiles each once. Its entries are keyed by the program, the
# jax version and the compile options, so a stale entry is never used.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sora_jax_tests_jax_cache")
)


import gc  # noqa: E402

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops each module's compiled programs when it ends: an xdist worker runs dozens of
    modules, and their executables kept in memory grew a worker past 8 GB (XLA then aborts
    allocating); later modules get theirs back from the persistent cache."""
    yield
    jax.clear_caches()
    gc.collect()
