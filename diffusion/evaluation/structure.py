"""Measures of samples of the worked examples' data, against held-out data and against noise.

Each statistic is a distribution over examples (or residues); a set of
samples is compared with the held-out test split by the Wasserstein-1
distance between the two distributions, beside two yardsticks: the train
split against the test split (the floor: how far two real sets lie) and
noise against the test split (the ceiling: a sampler that learned nothing).

- point sets (protein Cα traces, Å): consecutive Cα-Cα distances (3.8 Å in real
  chains), the Cα virtual bond angles, the radius of gyration;
- volumes (phantoms): the fraction of voxels inside the skull, the number of bright
  blobs (connected components above half intensity), their mean intensity;
- sequences (sinusoids): the dominant frequency (cycles per trace), the amplitude.
"""

import numpy as np


def chain_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
  """x: [N, L, 3] Cα coordinates in Å -> {"ca_ca_distance" [N (L-1)], "bond_angle" [N (L-2)]
  (degrees), "radius_of_gyration" [N]}."""
  x = np.asarray(x, np.float64)
  bonds = np.diff(x, axis=1)
  lengths = np.linalg.norm(bonds, axis=-1)
  u, v = -bonds[:, :-1], bonds[:, 1:]
  cos = np.sum(u * v, -1) / np.maximum(lengths[:, :-1] * lengths[:, 1:], 1e-9)
  centred = x - x.mean(axis=1, keepdims=True)
  return {"ca_ca_distance": lengths.ravel(),
          "bond_angle": np.degrees(np.arccos(np.clip(cos, -1, 1))).ravel(),
          "radius_of_gyration": np.sqrt(np.mean(np.sum(centred ** 2, -1), axis=1))}


def volume_statistics(v: np.ndarray) -> dict[str, np.ndarray]:
  """v: uint8 [N, D, H, W, 1] -> {"skull_fraction", "blobs", "blob_intensity"}, each [N]."""
  from scipy import ndimage
  v = np.asarray(v, np.float64)[..., 0] / 255
  fraction = np.mean(v > 0.15, axis=(1, 2, 3))
  blobs, intensity = [], []
  for volume in v:
    bright = volume > 0.45
    _, count = ndimage.label(bright)
    blobs.append(count)
    intensity.append(volume[bright].mean() if bright.any() else 0.0)
  return {"skull_fraction": fraction, "blobs": np.array(blobs, np.float64),
          "blob_intensity": np.array(intensity)}


def sequence_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
  """x: [N, L, 1] -> {"frequency": the strongest Fourier frequency (cycles per trace),
  "amplitude": half the peak-to-peak range}, each [N]."""
  x = np.asarray(x, np.float64)[..., 0]
  spectrum = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1))
  return {"frequency": np.argmax(spectrum[:, 1:], axis=1) + 1.0,
          "amplitude": (x.max(axis=1) - x.min(axis=1)) / 2}


STATISTICS = {"points": chain_statistics, "volume": volume_statistics,
              "sequence": sequence_statistics}


def superpose(moving: np.ndarray, target: np.ndarray, on: np.ndarray | None = None) -> np.ndarray:
  """`moving` [N, P, 3] rotated and translated (a proper rotation, Kabsch 1976) so that its
  points `on` (bool [P], default all) lie closest to `target`'s in the least-squares sense."""
  moving, target = np.asarray(moving, np.float64), np.asarray(target, np.float64)
  on = np.ones(moving.shape[1], bool) if on is None else np.asarray(on, bool)
  a, b = moving[:, on], target[:, on]
  ca, cb = a.mean(axis=1, keepdims=True), b.mean(axis=1, keepdims=True)
  u, _, vt = np.linalg.svd(np.swapaxes(a - ca, 1, 2) @ (b - cb))
  d = np.sign(np.linalg.det(u @ vt))  # -1: the best orthogonal map is a reflection
  u[:, :, -1] *= d[:, None]
  return (moving - ca) @ (u @ vt) + cb


def scaffold_rmsd(completed: np.ndarray, truth: np.ndarray, known: np.ndarray) -> np.ndarray:
  """RMSD [N] over the generated points (`known` False) of completions [N, P, 3] against the
  structures their motifs came from, in the motif's frame (no superposition: the motif fixes it)."""
  unknown = ~np.asarray(known, bool)
  diff = np.asarray(completed, np.float64)[:, unknown] - np.asarray(truth, np.float64)[:, unknown]
  return np.sqrt(np.mean(np.sum(diff ** 2, -1), axis=1))


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
  from scipy.stats import wasserstein_distance
  return float(wasserstein_distance(np.ravel(a), np.ravel(b)))


def compare(samples: np.ndarray, test: np.ndarray, train: np.ndarray, noise: np.ndarray,
            kind: str) -> dict[str, dict[str, float]]:
  """For each statistic of `kind`: its mean on each set and the W1 distance to `test` of the
  samples, the train split and the noise."""
  stats = STATISTICS[kind]
  sets = {"samples": stats(samples), "train": stats(train), "noise": stats(noise)}
  reference = stats(test)
  out = {}
  for name in reference:
    row = {"test_mean": float(np.mean(reference[name]))}
    for label, values in sets.items():
      row[f"{label}_mean"] = float(np.mean(values[name]))
      row[f"{label}_w1"] = wasserstein(values[name], reference[name])
    out[name] = row
  return out


KINDS = {"phantoms": "volume", "backbones": "points", "sinusoids": "sequence"}


def evaluate_synthetic(name: str, samples: np.ndarray, *, num: int = 256,
                       seed: int = 0) -> dict[str, dict[str, float]]:
  """`compare` for samples [N, *shape] (in the data's units) of a synthetic set
  (`diffusion.data.synthetic`): its test split, `num` train examples, and noise shaped like
  the data (Gaussian with the test split's per-coordinate spread for float data, uniform
  bytes for uint8)."""
  from diffusion.data.synthetic import SOURCES
  from diffusion.dataspec import DataSpec
  if name not in SOURCES:
    raise ValueError(f"`synthetic` must be one of {', '.join(SOURCES)}; got {name!r}")
  samples = np.asarray(samples)
  bad = int(np.sum(~np.isfinite(samples).all(axis=tuple(range(1, samples.ndim)))))
  if bad:
    raise ValueError(f"{bad} of {len(samples)} samples are not finite (NaN or inf): their "
                     "statistics would mean nothing")
  spec = DataSpec(samples.shape[1:], KINDS[name],
                  "uint8" if samples.dtype == np.uint8 else "float32")
  SOURCES[name](spec)  # checks the shape fits the set
  test_source = SOURCES[name](spec, split="test")
  train_source = SOURCES[name](spec, split="train")
  test = np.stack([test_source[i]["x"] for i in range(len(test_source))])
  train = np.stack([train_source[i]["x"] for i in range(min(num, len(train_source)))])
  rng = np.random.default_rng(seed)
  if test.dtype == np.uint8:
    noise = rng.integers(0, 256, (num, *spec.shape)).astype(np.uint8)
  else:
    noise = (rng.standard_normal((num, *spec.shape)) * test.std(axis=0, keepdims=True)
             + test.mean(axis=0, keepdims=True)).astype(np.float32)
  return compare(samples, test, train, noise, spec.kind)


def format_comparison(result: dict[str, dict[str, float]]) -> str:
  lines = [f"{'statistic':<20} {'test mean':>10} {'samples':>10} {'W1 samples':>11} "
           f"{'W1 train':>9} {'W1 noise':>9}"]
  for name, r in result.items():
    lines.append(f"{name:<20} {r['test_mean']:>10.3f} {r['samples_mean']:>10.3f} "
                 f"{r['samples_w1']:>11.3f} {r['train_w1']:>9.3f} {r['noise_w1']:>9.3f}")
  lines.append("(W1: Wasserstein-1 distance to the held-out test split's distribution; train: "
               "the floor, noise: the ceiling)")
  return "\n".join(lines)
