"""Test setup: 8 fake CPU devices, and no silent rank promotion in jnp."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402  (after XLA_FLAGS, which jax reads on import)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
  import numpy as np
  return np.random.default_rng(0)
