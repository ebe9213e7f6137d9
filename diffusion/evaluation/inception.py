"""The FID literature's Inception-v3 in Flax: pool features (2048) for FID/KID, logits (1008) for IS.

This is the network of the TensorFlow FID code (Heusel et al. 2017) as
pytorch-fid ports it (`pt_inception-2015-12-05-6726825d.pth`): torchvision's
Inception-v3 layout with the FID variants of its blocks (average pools that
do not count padding, a max pool in the last block) and 1,008 classes.
Nothing is downloaded: the user supplies the weights file,

  params = load_inception("pt_inception-2015-12-05-6726825d.pth")  # needs torch
  ddpm convert-inception pt_inception-2015-12-05-6726825d.pth fid_inception.npz
  params = load_inception("fid_inception.npz")                     # no torch needed

and `InceptionFeatures(params)(images_uint8)` gives float64 features and
logits, computed on the accelerator in batches. Layer names are the PyTorch
ones, so the conversion is a renaming and a transposition.

The FID it gives is pytorch-fid's, which resizes with PyTorch's bilinear
interpolation; the TensorFlow code of the papers resized inside its graph, and
the two differ slightly (pytorch-fid documents differences well under 1 FID
point on CIFAR-10).
"""

import io
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion import paths, platforms
from diffusion.distributed import BATCH, make_mesh

HIGHEST = jax.lax.Precision.HIGHEST
INPUT_SIZE = 299
NUM_FEATURES, NUM_CLASSES = 2048, 1008
_PAD = {0: (0, 0), 1: (1, 1), 2: (2, 2), 3: (3, 3)}


class BasicConv(nn.Module):
  """Convolution without bias, batch norm (eps 1e-3, running statistics), ReLU."""
  features: int
  kernel: Sequence[int]
  strides: int = 1
  padding: Sequence[int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, tuple(self.kernel), (self.strides,) * 2,
                padding=tuple(_PAD[p] for p in self.padding), use_bias=False, precision=HIGHEST,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool(x):
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, padding=0):
  return nn.max_pool(x, (3, 3), (stride, stride), ((padding, padding),) * 2)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  pool: str  # "avg" (Mixed_7b) or "max" (Mixed_7c): the FID network's two variants

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = _avg_pool(x) if self.pool == "avg" else _max_pool(x, stride=1, padding=1)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """images float [B, H, W, 3] in [0, 1] → (pool features [B, 2048], logits [B, 1008]).

  Resized to 299×299 bilinearly (half-pixel centres, no antialiasing, as
  PyTorch's F.interpolate(align_corners=False)) and scaled to [-1, 1].
  """

  @nn.compact
  def __call__(self, x):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[-1]), "bilinear",
                         antialias=False)
    x = 2 * x - 1
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=HIGHEST, name="fc")(features)
    return features, logits


_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def from_torch_state_dict(state_dict, source: str = "the weights") -> dict:
  """Flax variables {"params", "batch_stats"} from a pytorch-fid Inception state dict (name → array)."""
  params, stats = {}, {}
  for name, value in state_dict.items():
    *path, leaf = str(name).split(".")
    if leaf == "num_batches_tracked":
      continue
    value = np.asarray(value, np.float32)
    if path and path[-1] == "conv" and leaf == "weight" and value.ndim == 4:  # OIHW → HWIO
      params[(*path, "kernel")] = value.transpose(2, 3, 1, 0)
    elif path and path[-1] == "bn" and leaf in _BN:
      (stats if leaf.startswith("running") else params)[(*path, _BN[leaf])] = value
    elif path == ["fc"] and leaf in ("weight", "bias"):
      params[("fc", "kernel" if leaf == "weight" else "bias")] = value.T if leaf == "weight" \
          else value
    else:
      raise ValueError(f"Inception weights {source} are not the FID Inception-v3: unexpected "
                       f"entry {name!r}")
  return {"params": traverse_util.unflatten_dict(params),
          "batch_stats": traverse_util.unflatten_dict(stats)}


def _expected_shapes() -> dict:
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def weights_file(path: str):
  """The Inception weights' path, or a FileNotFoundError that says what to supply."""
  file = paths.resolve(path, "`inception`")
  if not file.exists():
    raise FileNotFoundError(
        f"Inception weights {path!r} do not exist: supply the FID network's weights "
        "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or an .npz converted from it with "
        "`save_weights(IN.pth, OUT.npz)`, `ddpm convert-inception`); nothing is downloaded")
  return file


def load_inception(path: str) -> dict:
  """The FID Inception's variables from pytorch-fid's .pth (needs torch) or a converted .npz."""
  file = weights_file(path)
  if path.endswith(".npz"):
    state = paths.load_npz(file, "Inception weights")
  else:
    try:
      import torch
    except ImportError:
      raise ImportError(f"reading {path!r} needs PyTorch (pip install torch); or convert it "
                        "once to .npz where PyTorch is installed") from None
    try:
      with file.open("rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and OS errors of a broken or foreign file
      raise ValueError(f"Inception weights {path!r} are no PyTorch checkpoint (torch.load: "
                       f"{type(e).__name__}: {paths.first_line(e)}); give pytorch-fid's .pth or "
                       "its .npz conversion") from None
    if not isinstance(state, dict):
      raise ValueError(f"Inception weights {path!r} hold a {type(state).__name__}, not a state dict")
    state = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in state.items()}
  variables = from_torch_state_dict(state, repr(path))
  got = {k: v.shape for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
  expected = _expected_shapes()
  if got != expected:
    missing = sorted(set(expected) - set(got))[:3]
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:3]
    raise ValueError(f"Inception weights {path!r} are not the FID Inception-v3: missing "
                     f"{missing}, wrong shapes {wrong}, unexpected "
                     f"{sorted(set(got) - set(expected))[:3]}")
  return variables


def check_rgb_images(images, name: str = "images") -> np.ndarray:
  """uint8 images [N, H, W, 1 or 3]; one channel is repeated to three."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8 images (0..255, as `ddpm sample` writes); got "
                     f"{images.dtype}")
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
    raise ValueError(f"{name} must have shape [N, H, W, 1 or 3]; got {images.shape}")
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def features_program(mesh):
  """jit(f)(variables, uint8 images [N, H, W, 3]) -> (features [N, 2048], logits [N, 1008]):
  the network of `InceptionFeatures` on a batch split over `mesh` (N divisible by its size)."""
  model = InceptionV3()
  features = lambda v, x: model.apply(v, x.astype(jnp.float32) / 255)
  return jax.jit(platforms.traced_for(mesh, features),
                 in_shardings=(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                               jax.sharding.NamedSharding(mesh, BATCH)))


def lower_features(mesh, n: int, size: tuple[int, int] = (32, 32)):
  """The Inception program of `InceptionFeatures` on n uint8 images of `size`, lowered from
  shapes alone (random-initialised variables' shapes: no weights file needed)."""
  images = jax.ShapeDtypeStruct((n, *size, 3), jnp.uint8)
  variables = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  return features_program(mesh).lower(variables, images)


class InceptionFeatures:
  """`__call__(uint8 images [N, H, W, C]) -> (features float64 [N, 2048], logits float64 [N, 1008])`,
  in jitted batches of `batch_size` sharded over the local devices.

  The logits are those of the Inception Score: pool features times the fc
  weights without the fc bias, as the original IS code (and torch-fidelity's
  "logits_unbiased") compute them.
  """

  def __init__(self, variables: dict, batch_size: int = 200):
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"`batch` must be a positive int; got {batch_size!r}")
    self.variables, self.batch_size = variables, batch_size
    self._fc = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
    devices = jax.local_devices()
    self.mesh = make_mesh(devices)
    self.batch_size += (-batch_size) % len(devices)
    self._apply = features_program(self.mesh)

  def __call__(self, images, name: str = "images", progress: bool = False):
    import tqdm
    images = check_rgb_images(images, name)
    sharding = jax.sharding.NamedSharding(self.mesh, BATCH)
    variables = jax.device_put(self.variables, jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec()))
    features = np.empty((len(images), 2048), np.float64)
    bar = tqdm.tqdm(total=len(images), desc="inception", unit="image", disable=not progress)
    pending = None
    for start in range(0, len(images), self.batch_size):
      batch = images[start:start + self.batch_size]
      n = len(batch)
      batch = batch[np.arange(n + (-n) % self.mesh.size) % n]
      f, _ = self._apply(variables, jax.device_put(batch, sharding))  # dispatched
      if pending:  # the previous batch's copy overlaps this one's computation
        self._collect(features, bar, *pending)
      pending = (start, n, f)
    if pending:
      self._collect(features, bar, *pending)
    bar.close()
    return features, features @ self._fc

  @staticmethod
  def _collect(features, bar, start, n, f):
    features[start:start + n] = np.asarray(f, np.float64)[:n]
    bar.update(n)


def save_weights(weights: str, out: str) -> int:
  """Converts the FID Inception's weights file `weights` (pytorch-fid's .pth) once into an .npz
  `out` that needs no PyTorch to read; returns the number of arrays written."""
  if not str(out).endswith(".npz"):
    raise ValueError(f"`out` {out!r} must end in .npz")
  variables = load_inception(weights)
  state = {}
  flat = traverse_util.flatten_dict(variables)
  for (collection, *path, leaf), value in flat.items():
    value = np.asarray(value)
    if leaf == "kernel" and path[-1] == "conv":
      state[".".join(path) + ".weight"] = value.transpose(3, 2, 0, 1)
    elif path == ["fc"]:
      state["fc." + ("weight" if leaf == "kernel" else "bias")] = value.T if leaf == "kernel" \
          else value
    else:
      state[".".join(path) + "." + {"scale": "weight", "bias": "bias", "mean": "running_mean",
                                    "var": "running_var"}[leaf]] = value
  paths.save_npz(paths.resolve(out, "`out`"), **state)
  return len(state)
