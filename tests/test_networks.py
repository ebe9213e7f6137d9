"""The registry's networks beside the U-Net: the DiT (any spatial rank) and the EGNN (equivariant,
for point sets), the Denoiser adapters, and the registry itself."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import models
from diffusion.data.loader import random_rotation
from diffusion.models.dit import DiT, patchify, unpatchify
from diffusion.runs import build

DIT = dict(name="dit", patch_size=2, hidden_size=32, depth=2, num_heads=4)
EGNN = dict(name="egnn", hidden=32, depth=3)


@pytest.mark.parametrize("shape", [(8, 2), (8, 4, 3), (4, 4, 8, 1)])
def test_patches_are_contiguous_blocks_and_unpatchify_inverts(shape):
  x = jnp.arange(2 * np.prod(shape), dtype=jnp.float32).reshape(2, *shape)
  tokens, grid = patchify(x, 2)
  assert tokens.shape == (2, np.prod(grid), 2 ** (len(shape) - 1) * shape[-1])
  # Token 0 holds the block at the origin, token 1 the next block along the last axis.
  first = x[(slice(None),) + (slice(0, 2),) * (len(shape) - 1)]
  np.testing.assert_array_equal(tokens[:, 0], first.reshape(2, -1))
  second = x[(slice(None),) + (slice(0, 2),) * (len(shape) - 2) + (slice(2, 4),)]
  np.testing.assert_array_equal(tokens[:, 1], second.reshape(2, -1))
  np.testing.assert_array_equal(unpatchify(tokens, grid, 2, shape[-1]), x)


@pytest.mark.parametrize("shape", [(16, 1), (8, 8, 3), (8, 8, 8, 1)])
def test_dit_starts_as_zero_and_trains_on_any_rank(shape):
  model = models.build({**DIT, "num_classes": 3, "learned_variance": True}, shape)
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  t, y = jnp.array([3, 500]), jnp.array([0, 3])
  variables = jax.jit(model.init)(jax.random.key(1), x, t, y)
  out = jax.jit(model.__call__)(variables, x, t, y)
  assert out.shape == (2, *shape[:-1], 2 * shape[-1])
  np.testing.assert_array_equal(out, 0)  # adaLN-Zero: the final layer starts at zero
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model({"params": p}, x, t, y) * x.repeat(2, -1))))(
      variables["params"])
  assert float(jnp.abs(grads["final"]["kernel"]).max()) > 0


def egnn_and_variables(n=10, scale=0.1):
  model = models.build(EGNN, (n, 3))
  x = jax.random.normal(jax.random.key(0), (2, n, 3))
  t = jnp.array([10, 700])
  variables = jax.jit(model.init)(jax.random.key(1), x, t)
  # The coordinate heads start at zero; give them weights so that the test can fail.
  variables = jax.tree.map(lambda a: a + scale * jax.random.normal(jax.random.key(2), a.shape),
                           variables)
  return model, variables, x, t


def test_egnn_is_rotation_equivariant_and_translation_invariant():
  model, variables, x, t = egnn_and_variables()
  apply = jax.jit(model.__call__)
  out = apply(variables, x, t)
  assert float(jnp.abs(out).max()) > 1e-3
  rotation = jnp.asarray(random_rotation(np.random.default_rng(0)), jnp.float32)
  np.testing.assert_allclose(apply(variables, x @ rotation.T, t), out @ rotation.T, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(apply(variables, x + jnp.array([[[3.0, -1.0, 2.0]]]), t), out,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-4)  # in the CoM-free subspace
  # A permutation of the points is not a symmetry of a chain (positions along it matter).
  swapped = apply(variables, x[:, ::-1], t)[:, ::-1]
  assert float(jnp.abs(swapped - out).max()) > 1e-3


def test_sampling_with_an_equivariant_network_is_rotation_invariant_in_distribution():
  """Samples of an E(3)-equivariant ε_θ from isotropic noise have an isotropic second moment:
  E[x xᵀ] ∝ I; a network that is not equivariant gives an anisotropic one (the test fails)."""
  from diffusion.distributed import make_mesh
  from diffusion.sampling import make_sampler
  from _tiny import tiny_config
  config = tiny_config()
  config.data.update(dict(shape=(8, 3), kind="points"))
  config.diffusion.clip_x0 = False
  model, variables, _, _ = egnn_and_variables(8, scale=0.02)
  mesh = make_mesh(jax.devices()[:1])
  anisotropic = models.function(lambda p, x, t: x @ jnp.diag(jnp.array([1.0, 0.2, -0.6])),
                                params={})

  def second_moment(net, params):
    sample = make_sampler(build(config, net), mesh, sampler="ddim", steps=10)
    x = np.asarray(sample(params, jax.random.key(0), 0, np.zeros(1024, np.int32)))
    m = np.einsum("bni,bnj->ij", x, x) / (x.shape[0] * x.shape[1])
    return m / np.trace(m) * 3

  np.testing.assert_allclose(second_moment(model, variables), np.eye(3), atol=0.06)
  assert np.abs(second_moment(anisotropic, {"params": {}}) - np.eye(3)).max() > 0.2


@pytest.mark.parametrize("settings, shape", [(DIT, (8, 8, 3)), (EGNN, (10, 3))])
def test_every_network_takes_remat_and_bfloat16(settings, shape):
  """config.model.remat recomputes activations in the backward pass: the same gradient, with
  the blocks' forward products in the gradient's program again; bfloat16 computes in bf16.
  (The U-Net's: tests/test_unet.py.)"""
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  t = jnp.array([10, 700])
  model = models.build(settings, shape)
  params = jax.jit(model.init)(jax.random.key(1), x, t)["params"]
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)
  grads, hlo = {}, {}
  for remat in (False, True):
    model = models.build({**settings, "remat": remat}, shape)
    lowered = jax.jit(jax.grad(lambda p: jnp.sum(model({"params": p}, x, t) ** 2))).lower(params)
    hlo[remat], grads[remat] = lowered.as_text(), lowered.compile()(params)
  a, b = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads[r])]) for r in (True, False))
  assert np.linalg.norm(a - b) < 1e-4 * np.linalg.norm(b)  # the order of float sums differs
  products = lambda text: text.count("stablehlo.convolution") + text.count("stablehlo.dot_general")
  assert products(hlo[True]) > products(hlo[False]) > 0, (products(hlo[True]), products(hlo[False]))
  bf16 = models.build({**settings, "dtype": "bfloat16"}, shape)
  assert "bf16" in jax.jit(lambda p: bf16({"params": p}, x, t)).lower(params).as_text()


def test_adapters_call_the_network_the_same_way():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, t):
      return nn.Dense(x.shape[-1])(x) * (1 + t[:, None, None])

  x, t = jnp.ones((2, 5, 3)), jnp.array([1, 2])
  module = Net()
  params = module.init(jax.random.key(0), x, t)["params"]
  expected = module.apply({"params": params}, x, t)
  linen = models.linen(module)
  function = models.function(lambda p, x, t: module.apply({"params": p}, x, t), params=params)
  for denoiser in (linen, function):
    np.testing.assert_allclose(denoiser({"params": params}, x, t), expected)
  assert models.as_denoiser(module).module is module
  # A bare apply function is not an NNX factory (rngs -> module): named, with the adapter to use.
  with pytest.raises(TypeError, match=r"wrap an apply function f\(params, x, t\) with "
                                      r"models.function"):
    models.as_denoiser(lambda p, x, t: x)


def test_nnx_adapter_reseeds_dropout_and_carries_batch_statistics():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(3, 3, rngs=rngs)
      self.norm = nnx.BatchNorm(3, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, t):
      return self.drop(self.norm(self.dense(x)))

  model = models.nnx(Net)
  x = jax.random.normal(jax.random.key(0), (4, 5, 3))
  t = jnp.zeros((4,), jnp.int32)
  variables = model.init(jax.random.key(1), x, t)
  assert set(variables) == {"params", "state"}
  a, updates = model.train_apply(variables, x, t, None, None, jax.random.key(2))
  b, _ = model.train_apply(variables, x, t, None, None, jax.random.key(3))
  assert float(jnp.abs(a - b).max()) > 0  # another key, another dropout mask
  assert float(jnp.abs(updates["state"]["norm"]["mean"]).max()) > 0  # statistics moved
  # Inference: no dropout, running statistics: deterministic.
  np.testing.assert_array_equal(model(variables, x, t), model(variables, x, t))


def test_registry_names_factories_and_import_paths():
  assert {"unet", "dit", "egnn"} <= set(models.registered())

  @models.register("test_identity")
  def identity(settings, shape):
    return models.function(lambda p, x, t: x * p["scale"], params={"scale": jnp.ones(())})

  model = models.build({"name": "test_identity"}, (4, 2))
  assert model.name == "test_identity"
  x = jnp.ones((1, 4, 2))
  np.testing.assert_array_equal(model(model.init(jax.random.key(0), x, jnp.zeros(1)), x,
                                      jnp.zeros(1)), x)
  by_path = models.build({"name": "diffusion.models.dit:dit", **{k: v for k, v in DIT.items()
                                                                  if k != "name"}}, (8, 1))
  assert isinstance(by_path.module, DiT)


@pytest.mark.parametrize("settings, shape, message", [
    ({"name": "nope"}, (8, 8, 1), r"config.model.name 'nope' is neither a registered network "
                                  r"\(dit, egnn, .*unet\) nor an import path"),
    ({"name": "no_such_module:f"}, (8, 8, 1), r"config.model.name 'no_such_module:f': cannot import"),
    (EGNN, (8, 8, 3), r"config.data.shape \(8, 8, 3\): the EGNN .* takes point sets"),
    ({**DIT, "patch_size": 3}, (8, 8, 1), r"divisible by config.model.patch_size 3"),
    ({"name": "unet", "ch": 16, "ch_mult": (1, 2, 2), "num_groups": 4}, (10, 10, 10, 1),
     r"config.data.shape \(10, 10, 10, 1\): each spatial axis must be divisible by 4"),
    ({**DIT, "hidden_size": 30}, (8, 8, 1), r"config.model.hidden_size 30 must be divisible"),
    ({**DIT, "ch": 3}, (8, 8, 1), r"config.model has keys \['ch'\] that the DiT does not take"),
])
def test_bad_networks_are_named(settings, shape, message):
  with pytest.raises(ValueError, match=message):
    models.build(settings, shape)


def test_attention_picks_cudnn_only_where_it_pays_and_equals_softmax_attention():
  """cuDNN for half-precision heads of <= 128 channels on a GPU, XLA elsewhere; the result is
  softmax(q k^T / sqrt(D)) v, computed here in NumPy."""
  from diffusion.models.attention import attention, flax_attention_fn, implementation
  assert implementation(jnp.bfloat16, 64, "gpu") == "cudnn"
  assert implementation(jnp.float16, 128, "cuda") == "cudnn"
  assert implementation(jnp.bfloat16, 256, "gpu") is None  # the U-Net's head: XLA was faster
  assert implementation(jnp.float32, 64, "gpu") is None
  assert implementation(jnp.bfloat16, 60, "gpu") is None
  assert implementation(jnp.bfloat16, 64, "cpu") is None
  assert implementation(jnp.bfloat16, 64, "tpu") is None
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, n, 3, 8)).astype(np.float32) for n in (5, 7, 7))
  logits = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bhls,bshd->blhd", weights, v)
  np.testing.assert_allclose(attention(q, k, v), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flax_attention_fn(q, k, v, dropout_rate=0.1, deterministic=True),
                             expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_unet_program_convolves_in_bf16_and_fuses_its_elementwise_work():
  """What an accelerator will run, read off XLA's programs for the gradient of a bf16 U-Net:
  every convolution takes bf16 operands (forward and backward), the only float32 operand of a
  matrix product is attention's probabilities (softmax in float32, its rows over the 4x4
  positions), and the optimised program leaves no elementwise or reduction pass outside a
  fusion: GroupNorm, swish and the residual adds run inside fused kernels."""
  import re
  model = models.build({"name": "unet", "ch": 8, "ch_mult": (1,), "num_res_blocks": 1,
                        "attn_resolutions": (4,), "num_groups": 4, "dtype": "bfloat16"},
                       (4, 4, 1))
  x, t = jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(0), x, t, None, None)["params"]
  grad = jax.jit(jax.grad(lambda p: jnp.mean(model({"params": p}, x, t, None, None) ** 2)))
  lowered = grad.lower(params)
  text = lowered.as_text()
  operands = lambda op: re.findall(
      rf"stablehlo.{op}.*?:\s*\((tensor<[^>]*>), (tensor<[^>]*>)\)", text)
  convolutions = operands("convolution")
  assert len(convolutions) > 10 and all("bf16" in a and "bf16" in b for a, b in convolutions)
  f32 = [a for pair in operands("dot_general") for a in pair if "f32" in a]
  assert all(a.count("x16x") + a.startswith("tensor<16x") >= 2 for a in f32), f32
  compiled = lowered.compile().as_text()
  entry = compiled[compiled.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  kinds = set(re.findall(r"= \S+ ([a-z][\w-]*)\(", entry))
  assert kinds <= {"fusion", "parameter", "convolution", "dot", "bitcast", "copy", "constant",
                   "tuple", "get-tuple-element", "custom-call"}, kinds


@pytest.mark.parametrize("settings, shape", [(None, (8, 8, 1)), (DIT, (8, 8, 3)), (EGNN, (10, 3))])
def test_every_network_takes_a_continuous_noise_level(settings, shape):
  """The embeddings take a float conditioning (flow matching's t, EDM's c_noise) as well as
  integer timesteps: a float t equals its integer, and between two integers the output moves
  continuously (a small step in t, a small change; t = 3.5 is neither 3 nor 4)."""
  from _tiny import tiny_config
  settings = dict(tiny_config().model) if settings is None else settings
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  model = models.build(settings, shape)
  variables = jax.jit(model.init)(jax.random.key(1), x, jnp.array([3, 3]))
  variables = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                           variables)
  at = lambda t: np.asarray(jax.jit(model)(variables, x, t), np.float64)
  three, four = at(jnp.array([3, 3])), at(jnp.array([4, 4]))
  np.testing.assert_allclose(at(jnp.array([3.0, 3.0])), three, rtol=1e-5, atol=1e-6)
  half = at(jnp.array([3.5, 3.5]))
  assert not np.allclose(half, three) and not np.allclose(half, four)
  near = at(jnp.array([3.001, 3.001]))
  assert np.abs(near - three).max() < 0.01 * np.abs(four - three).max()
