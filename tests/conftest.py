"""Test setup: 8 fake CPU devices, fast compiles, and no silent rank promotion in jnp.

XLA's CPU backend spends most of a test's time compiling; the tests compile
with LLVM optimisation off (the same programs, less optimised machine code)
and share a persistent compilation cache, across pytest-xdist's workers and with the `ddpm`
processes they start.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0"])
# One cache for the whole session: pytest-xdist's workers (same test run id) share it.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
  os.makedirs(os.path.join(tempfile.gettempdir(), f"ddpm-test-jit-{_RUN}"), exist_ok=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ddpm-test-jit-{_RUN}") if _RUN
                      else tempfile.mkdtemp(prefix="ddpm-test-jit-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# The tests run on the CPU's devices. With libtpu installed (the test extra has it, for `ddpm
# plan`), JAX would otherwise start the TPU backend first and libtpu print its warnings.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The digits classifier of the digits measures is trained into a cache of the test session's own.
os.environ.setdefault("DDPM_CACHE_DIR", tempfile.mkdtemp(prefix="ddpm-test-cache-"))
# gs:// goes to a local emulator (test_object_store.py): gcsfs must not look for credentials or
# for a hierarchical-namespace bucket (a second API the emulator lacks), and must not cache
# listings (TensorStore writes behind its back). fsspec reads these when it is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("FSSPEC_GCS_TOKEN", "anon")
os.environ.setdefault("FSSPEC_GCS_USE_LISTINGS_CACHE", "false")

import jax  # noqa: E402  (after XLA_FLAGS, which jax reads on import)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
  import numpy as np
  return np.random.default_rng(0)


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker a core, and at least three. The tests spend a good part of their
  time waiting (background checkpoint saves, processes they start, their collectives), which a
  third worker fills on a two-core machine; `--maxprocesses` still caps the count."""
  return max(3, os.cpu_count() or 1)
