"""The U-Net: the paper's sizes, every variant under jit and grad, bfloat16, errors."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import models
from diffusion.models import UNet

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "configs")


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def param_count(model, shape, **kwargs):
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32), **kwargs))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name, count", [("cifar10", 35_746_307), ("celebahq256", 113_673_219)])
def test_the_papers_networks_have_the_papers_sizes(name, count):
  config = load_config(name)
  model = models.from_config(config.model)
  size, channels = config.data.image_size, config.data.channels
  assert param_count(model, (1, size, size, channels)) == count


def test_timestep_embedding_is_the_transformer_sinusoid():
  t = jnp.array([0, 1, 17, 999])
  emb = np.asarray(models.timestep_embedding(t, 128), np.float64)
  freqs = np.exp(-math.log(10000) * np.arange(64) / 63)
  want = np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], 1)
  np.testing.assert_allclose(emb, want, atol=2e-4)  # float32 sin of arguments up to 999
  assert models.timestep_embedding(t, 7).shape == (4, 7)


SMALL = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=8,
             dropout=0.1)
VARIANTS = {
    "1d": (dict(), (2, 8, 2), {}),
    "2d_multi_head": (dict(num_heads=4), (2, 8, 8, 3), {}),
    "3d": (dict(), (2, 8, 8, 8, 1), {}),
    "class_conditional": (dict(num_classes=10), (2, 8, 8, 3), {"y": jnp.array([3, 10])}),
    "learned_variance": (dict(learned_variance=True, head_dim=16, attn_resolutions=(8, 4)),
                         (2, 8, 8, 3), {}),
    "image_conditioned": (dict(cond_channels=3), (2, 8, 8, 3), {"cond": jnp.ones((2, 8, 8, 3))}),
}


def random_params(model, *args, **kwargs):
  """Parameters of the init's shapes drawn in NumPy, 1/sqrt(fan-in) scaled.

  Compiling `model.init` costs seconds per variant on a CPU (each parameter's
  random draw is its own threefry computation); `test_init` covers it once.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))["params"]
  rng = np.random.default_rng(0)
  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "bias" in name:
      return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)
    if "scale" in name:
      return jnp.asarray(1 + rng.normal(0, 0.1, leaf.shape), jnp.float32)
    fan_in = math.prod(leaf.shape[:-1]) if "kernel" in name else 1
    return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_init():
  model = UNet(**SMALL, num_classes=2)
  x, t, y = jnp.ones((1, 8, 8, 3)), jnp.array([3]), jnp.array([1])
  variables = jax.jit(model.init)(jax.random.key(0), x, t, y=y)
  assert set(variables) == {"params"}
  params = variables["params"]
  assert params["class_embed"]["embedding"].shape == (3, 128)
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), params)
  assert shapes == jax.tree.map(lambda a: (a.shape, a.dtype), random_params(model, x, t, y=y))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_run_under_jit_and_grad_in_float32_and_bfloat16(variant):
  options, shape, extra = VARIANTS[variant]
  model = UNet(**{**SMALL, **options})
  x = jax.random.uniform(jax.random.key(1), shape, minval=-1, maxval=1)
  t = jnp.array([0, 999])
  params = random_params(model, x, t, **extra)
  def loss(p):  # the output comes back beside the gradient: one program for both
    out = model.apply({"params": p}, x, t, **extra)
    return jnp.mean(out ** 2), out
  grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
  channels = shape[-1] * (2 if options.get("learned_variance") else 1)
  assert out.shape == shape[:-1] + (channels,) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))

  bf16 = UNet(**{**SMALL, **options}, dtype=jnp.bfloat16)
  out16 = jax.jit(lambda p, x: bf16.apply({"params": p}, x, t, **extra))(params, x)
  assert out16.dtype == jnp.float32 and np.all(np.isfinite(out16))
  rel = float(jnp.linalg.norm(out16 - out) / jnp.linalg.norm(out))
  assert rel < 0.03, rel


def test_remat_changes_nothing_but_memory():
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  t = jnp.array([5, 500])
  options = {**SMALL, "ch_mult": (1,), "attn_resolutions": (8,)}
  plain, remat = UNet(**options), UNet(**options, remat=True)
  params = random_params(plain, x, t)
  loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x, t) ** 2)
  g1, g2 = jax.jit(jax.grad(loss(plain)))(params), jax.jit(jax.grad(loss(remat)))(params)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_conditioning_changes_the_output_and_dropout_needs_train():
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  t = jnp.array([5, 500])
  model = UNet(**SMALL, num_classes=3, cond_channels=1)
  cond = jnp.zeros((2, 8, 8, 1))
  params = random_params(model, x, t, y=jnp.array([0, 1]), cond=cond)
  f = jax.jit(lambda y, c, **kw: model.apply({"params": params}, x, t, y=y, cond=c, **kw),
              static_argnames="train")
  base = f(jnp.array([0, 1]), cond)
  assert not np.allclose(base, f(jnp.array([2, 3]), cond))
  assert not np.allclose(base, f(jnp.array([0, 1]), cond + 1))
  np.testing.assert_array_equal(base, f(jnp.array([0, 1]), cond))
  drop = lambda seed: f(jnp.array([0, 1]), cond, train=True,
                        rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(base, drop(0))
  np.testing.assert_array_equal(drop(0), drop(0))


@pytest.mark.parametrize("options, shape, kwargs, match", [
    (dict(), (2, 7, 8, 3), {}, r"each axis must be divisible by 2 for the 1 downsamplings"),
    (dict(), (2, 3), {}, r"x must be \[B, \*spatial, C\]"),
    (dict(num_classes=10), (2, 8, 8, 3), {}, r"y \(int \[B\] class labels in \[0, 10\]"),
    (dict(), (2, 8, 8, 3), {"y": jnp.array([1, 2])}, "the model is unconditional"),
    (dict(cond_channels=2), (2, 8, 8, 3), {"cond": jnp.ones((2, 8, 8, 3))},
     r"cond must be the conditioning image of shape \(2, 8, 8, 2\)"),
    (dict(), (2, 8, 8, 3), {"cond": jnp.ones((2, 8, 8, 3))}, "cond_channels=0"),
    (dict(num_heads=3), (2, 8, 8, 3), {}, "not divisible into num_heads=3 heads"),
    (dict(attn_resolutions=(16,)), (2, 8, 8, 3), {},
     r"attn_resolutions \(16,\): no level has size 16 .* sizes along the first spatial axis: "
     r"\[8, 4\]"),
    (dict(ch_mult=2), (2, 8, 8, 3), {}, r"UNet ch_mult must be a tuple of ints"),
])
def test_bad_input_is_named_before_compilation(options, shape, kwargs, match):
  model = UNet(**{**SMALL, **options})
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda x: model.init(jax.random.key(0), x, jnp.zeros(shape[:1], jnp.int32),
                                 **kwargs)).lower(jnp.zeros(shape))


def test_timesteps_of_the_wrong_batch():
  with pytest.raises(ValueError, match=r"t must have shape \[B\] = \(2,\)"):
    jax.eval_shape(lambda: UNet(**SMALL).init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)),
                                              jnp.zeros((3,))))


def test_from_config_errors():
  with pytest.raises(ValueError, match=r"config.model has unknown keys \['channels'\]"):
    models.from_config({"channels": 3})
  with pytest.raises(ValueError, match="config.model.dtype 'bf16' is not a dtype"):
    models.from_config({"dtype": "bf16"})
  with pytest.raises(ValueError, match="must be divisible by num_groups=32"):
    models.from_config({"ch": 48})
  with pytest.raises(ValueError, match="config.model.name must be 'unet'"):
    models.from_config({"name": "dit"})
  model = models.from_config({"ch": 64, "dtype": "bfloat16", "ch_mult": [1, 2]})
  assert model.dtype == jnp.bfloat16 and model.ch_mult == (1, 2)
  assert models.from_config(models.model_kwargs(model)) == model


def test_save_and_load_round_trip(tmp_path):
  model = UNet(**SMALL, num_classes=2, dtype=jnp.bfloat16)
  x, t, y = jnp.ones((1, 8, 8, 3)), jnp.array([3]), jnp.array([1])
  params = random_params(model, x, t, y=y)
  models.save(str(tmp_path / "m"), model, params)
  loaded, loaded_params = models.load(str(tmp_path / "m"))
  assert loaded == model
  apply = lambda m, p: jax.jit(m.apply)({"params": p}, x, t, y=y)
  np.testing.assert_array_equal(apply(loaded, loaded_params), apply(model, params))
  with pytest.raises(FileExistsError, match="already holds a model"):
    models.save(str(tmp_path / "m"), model, params)
  with pytest.raises(FileNotFoundError, match="has no model.json"):
    models.load(str(tmp_path))
  # The Denoiser that load_run gives saves its UNet; another network is refused before
  # anything is written, and a half-written folder is named rather than overwritten.
  models.save(str(tmp_path / "d"), models.as_denoiser(model), params)
  assert models.load(str(tmp_path / "d"))[0] == model
  with pytest.raises(TypeError, match="models.save keeps the DDPM UNet"):
    models.save(str(tmp_path / "other"), models.function(lambda p, x, t: x, params=0.0), params)
  assert not (tmp_path / "other").exists()
  (tmp_path / "half" / "params").mkdir(parents=True)
  with pytest.raises(FileExistsError, match="holds params/ without model.json"):
    models.save(str(tmp_path / "half"), model, params)


@pytest.mark.parametrize("shape, groups", [((3, 8, 8, 32), 8), ((2, 5, 6, 7, 16), 4),
                                           ((4, 12, 6), 3)])
def test_group_norm_equals_flax_and_a_float64_formula(shape, groups):
  """1-, 2- and 3-D data, scale and bias away from their initial values."""
  import flax.linen as nn
  from diffusion.models.unet import GroupNorm
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, shape), jnp.float32)
  params = {"params": {"scale": jnp.asarray(rng.normal(1, 0.3, shape[-1]), jnp.float32),
                       "bias": jnp.asarray(rng.normal(0, 0.3, shape[-1]), jnp.float32)}}
  ours = GroupNorm(groups).apply(params, x)
  np.testing.assert_allclose(ours, nn.GroupNorm(groups, epsilon=1e-6).apply(params, x),
                             atol=2e-5)
  x64 = np.asarray(x, np.float64).reshape(shape[0], -1, groups, shape[-1] // groups)
  mean, var = x64.mean(axis=(1, 3), keepdims=True), x64.var(axis=(1, 3), keepdims=True)
  expected = ((x64 - mean) / np.sqrt(var + 1e-6)).reshape(shape) * np.asarray(
      params["params"]["scale"], np.float64) + np.asarray(params["params"]["bias"], np.float64)
  np.testing.assert_allclose(ours, expected, atol=2e-5)
  assert GroupNorm(groups, dtype=jnp.bfloat16).apply(params, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 8, 8, 3), dict(padding=1)),
    ((2, 8, 8, 3), dict(strides=(2, 2), padding=((0, 1), (0, 1)))),
    ((2, 16, 5), dict(padding=1)),
    ((2, 6, 8, 8, 3), dict(padding=1)),
    ((2, 8, 8, 8, 3), dict(strides=(2, 2, 2), padding=((0, 1),) * 3)),
])
def test_conv_equals_flax_conv(shape, kwargs):
  """The U-Net's Conv has nn.Conv's parameters and initialisation and computes its result
  (a 3-D convolution on the CPU as 2-D convolutions over the depth taps)."""
  import flax.linen as nn
  from diffusion.models.unet import Conv
  nd = len(shape) - 2
  x = jax.random.normal(jax.random.key(0), shape)
  ours, theirs = Conv(7, (3,) * nd, **kwargs), nn.Conv(7, (3,) * nd, **kwargs)
  variables = theirs.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), variables)
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), atol=2e-6)
