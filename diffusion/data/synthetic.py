"""Synthetic data sets of the worked examples: nothing to download, every example a pure function
of its index, a train split and a disjoint held-out "test" split.

- "phantoms": 3-D Shepp-Logan-style head phantoms, a stand-in for MRI/CT volumes:
  a low-intensity ellipsoid "skull" holding 1 to 3 brighter ellipsoids, uint8 [D, H, W, 1].
- "backbones": protein Cα traces [N, 3] in Å, ideal α-helices (label 0) and β-hairpins
  (label 1), rebuilt from their Cα bond angles and torsions (Cα-Cα 3.8 Å) with Gaussian noise
  on the angles (3°) and torsions (10°), randomly rotated and centred.
- "sinusoids": 1-D traces [L, 1]: A sin(2π f t / L + φ) with f in 1..4 cycles, A in [0.5, 1],
  a random phase and a little noise.

`size` sets the number of train examples (each set has a default); the test split has
DEFAULT_TEST examples.
"""

import numpy as np

from diffusion.dataspec import DataSpec

DEFAULT_TEST = 256
SPLITS = ("train", "test")


class _Synthetic:
  default_size = 2048
  num_classes = 0

  def __init__(self, spec: DataSpec, *, split: str = "train", size: int | None = None):
    if split not in SPLITS:
      raise ValueError(f"config.data.split must be one of {', '.join(SPLITS)} for synthetic "
                       f"data; got {split!r}")
    self.check(spec)
    self.spec = spec
    self.size = DEFAULT_TEST if split == "test" else (size or self.default_size)
    self.seed = SPLITS.index(split) + 1  # train and test draw from disjoint seeds

  def check(self, spec: DataSpec) -> None:
    pass

  def __len__(self) -> int:
    return self.size

  def rng(self, index: int) -> np.random.Generator:
    if not 0 <= index < self.size:
      raise IndexError(index)
    return np.random.default_rng([self.seed, index])


class Phantoms(_Synthetic):
  """uint8 [D, H, W, 1] head phantoms (see the module docstring)."""
  default_size = 2048

  def check(self, spec):
    if spec.kind != "volume" or spec.shape[-1] != 1 or len(set(spec.shape[:3])) != 1:
      raise ValueError(f"config.data.shape {spec.shape}: phantoms are cubes (S, S, S, 1) of "
                       "kind volume")

  def __getitem__(self, index: int) -> dict:
    rng = self.rng(index)
    size = self.spec.shape[0]
    grid = (np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1) + 0.5) / size * 2 - 1
    volume = np.zeros((size,) * 3, np.float32)
    skull = _ellipsoid(grid, rng.uniform(-0.05, 0.05, 3), rng.uniform(0.7, 0.9, 3),
                       rng.uniform(0, np.pi))
    volume[skull] = 0.3
    count = rng.integers(1, 4)
    for _ in range(count):
      inner = _ellipsoid(grid, rng.uniform(-0.35, 0.35, 3), rng.uniform(0.12, 0.3, 3),
                         rng.uniform(0, np.pi))
      volume[inner & skull] = rng.uniform(0.6, 1.0)
    x = np.round(volume * 255).astype(np.uint8)[..., None]
    if self.spec.dtype != "uint8":
      x = x.astype(np.float32) / 255 * 2 - 1
    return {"x": x, "label": int(count) - 1}


def _ellipsoid(grid, centre, axes, angle) -> np.ndarray:
  """Voxels of grid [S, S, S, 3] inside an ellipsoid rotated by `angle` about the first axis."""
  c, s = np.cos(angle), np.sin(angle)
  rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
  local = (grid - centre) @ rotation
  return np.sum((local / axes) ** 2, axis=-1) <= 1


# Cα internal coordinates (bond angle θ between consecutive virtual bonds, torsion τ), degrees.
HELIX = (91.0, 50.0)
CA_CA = 3.8


def chain_from_internal(angles: np.ndarray, torsions: np.ndarray, bond: float = CA_CA
                        ) -> np.ndarray:
  """Cα coordinates [N, 3] from bond angles θ_i and torsions τ_i (degrees, [N] each; the
  first two angles and three torsions are unused), by placing each atom from the previous
  three (the NeRF construction)."""
  n = len(angles)
  theta, tau = np.radians(angles), np.radians(torsions)
  x = np.zeros((n, 3))
  x[1] = [bond, 0, 0]
  x[2] = x[1] + bond * np.array([-np.cos(theta[2]), np.sin(theta[2]), 0])
  for i in range(3, n):
    a, b, c = x[i - 3], x[i - 2], x[i - 1]
    bc = (c - b) / np.linalg.norm(c - b)
    normal = np.cross(b - a, bc)
    normal /= np.linalg.norm(normal)
    frame = np.stack([bc, np.cross(normal, bc), normal], axis=1)
    local = bond * np.array([-np.cos(theta[i]), np.sin(theta[i]) * np.cos(tau[i]),
                             np.sin(theta[i]) * np.sin(tau[i])])
    x[i] = c + frame @ local
  return x


def internal_from_chain(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The bond angles and torsions (degrees, [N] each, as `chain_from_internal` takes them) of
  Cα coordinates [N, 3]."""
  n = len(x)
  angles, torsions = np.zeros(n), np.zeros(n)
  for i in range(2, n):
    u, v = x[i - 2] - x[i - 1], x[i] - x[i - 1]
    angles[i] = np.degrees(np.arccos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))
  for i in range(3, n):
    b0, b1, b2 = x[i - 2] - x[i - 3], x[i - 1] - x[i - 2], x[i] - x[i - 1]
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    m = np.cross(n1, b1 / np.linalg.norm(b1))
    torsions[i] = np.degrees(np.arctan2(np.dot(m, n2), np.dot(n1, n2)))
  return angles, torsions


def ideal_hairpin(n: int, turn: int) -> np.ndarray:
  """Cα coordinates [n, 3] of a β-hairpin: a strand of `turn` residues (rise 3.3 Å, pleat
  ±0.9 Å), two turn residues, and the antiparallel strand 4.8 Å away."""
  pleat = lambda i: 0.9 * (-1) ** i
  first = [(3.3 * i, pleat(i), 0.0) for i in range(turn)]
  end = 3.3 * (turn - 1)
  bridge = [(end + 3.0, 0.0, 1.0), (end + 3.0, 0.0, 3.8)]
  second = [(end - 3.3 * j, pleat(j), 4.8) for j in range(n - turn - 2)]
  x = np.array(first + bridge + second, np.float64)
  steps = np.diff(x, axis=0)  # put every consecutive pair at exactly 3.8 Å
  steps = steps / np.linalg.norm(steps, axis=1, keepdims=True) * CA_CA
  return np.concatenate([x[:1], x[:1] + np.cumsum(steps, axis=0)])


class Backbones(_Synthetic):
  """Cα traces [N, 3] in Å of α-helices (label 0) and β-hairpins (label 1), centred and
  randomly rotated (see the module docstring)."""
  default_size = 4096
  num_classes = 2

  def check(self, spec):
    if spec.kind != "points" or spec.shape[-1] != 3 or spec.shape[0] < 8:
      raise ValueError(f"config.data.shape {spec.shape}: backbones are (N >= 8, 3) of kind "
                       "points")

  def __getitem__(self, index: int) -> dict:
    from diffusion.data.loader import random_rotation
    rng = self.rng(index)
    n = self.spec.shape[0]
    label = int(rng.integers(0, 2))
    if label == 0:
      angles, torsions = np.full(n, HELIX[0]), np.full(n, HELIX[1])
    else:
      angles, torsions = internal_from_chain(ideal_hairpin(n, n // 2 - 1 + int(rng.integers(-1, 2))))
    angles = angles + rng.normal(0, 3.0, n)
    torsions = torsions + rng.normal(0, 10.0, n)
    x = chain_from_internal(angles, torsions)
    x = (x - x.mean(axis=0)) @ random_rotation(rng).T
    return {"x": x.astype(np.float32), "label": label}


class Sinusoids(_Synthetic):
  """float32 [L, 1] sine waves (see the module docstring); label: the frequency - 1."""
  default_size = 4096
  num_classes = 4

  def check(self, spec):
    if spec.kind != "sequence" or spec.shape[-1] != 1:
      raise ValueError(f"config.data.shape {spec.shape}: sinusoids are (L, 1) of kind sequence")

  def __getitem__(self, index: int) -> dict:
    rng = self.rng(index)
    length = self.spec.shape[0]
    frequency = int(rng.integers(1, 5))
    amplitude, phase = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
    t = np.arange(length) / length
    x = amplitude * np.sin(2 * np.pi * frequency * t + phase) + rng.normal(0, 0.02, length)
    return {"x": x.astype(np.float32)[:, None], "label": frequency - 1}


SOURCES = {"phantoms": Phantoms, "backbones": Backbones, "sinusoids": Sinusoids}
