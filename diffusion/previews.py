"""What a person looks at for a batch of samples of any data kind, written beside the samples.

- images: one PNG grid;
- volumes: a PNG montage of the middle slice along each axis, one row per sample;
- sequences: a PNG of each trace (channel 0) as a line plot;
- point sets: a PNG of the points projected on the xy plane, joined in order (a chain), and
  a PDB file of every sample as a model of Cα atoms (coordinates in the data's units, Å).
"""

import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from diffusion import images, paths
from diffusion.dataspec import DataSpec


def _display(x: np.ndarray, spec: DataSpec) -> np.ndarray:
  """Samples in data units -> uint8 for display (float data: its model range [-1, 1])."""
  if x.dtype == np.uint8:
    return x
  return images.to_uint8(np.asarray(x, np.float32) / spec.scale)


def volume_montage(volumes: np.ndarray) -> np.ndarray:
  """uint8 [N, D, H, W, C] -> [N, 3, S, S, C]: the middle slice across each axis (padded to the
  largest side S), for `images.grid` with 3 columns."""
  n, d, h, w, c = volumes.shape
  side = max(d, h, w)
  out = np.zeros((n, 3, side, side, c), np.uint8)
  slices = (volumes[:, d // 2], volumes[:, :, h // 2], volumes[:, :, :, w // 2])
  for k, s in enumerate(slices):
    out[:, k, :s.shape[1], :s.shape[2]] = s
  return out


def _plot(lines: list[np.ndarray], size: int = 96, closed: bool = False) -> np.ndarray:
  """uint8 [size, size, 1]: polylines of 2-D points scaled into the frame together."""
  canvas = Image.new("L", (size, size), 255)
  draw = ImageDraw.Draw(canvas)
  points = np.concatenate(lines)
  low, high = points.min(axis=0), points.max(axis=0)
  span = np.maximum(high - low, 1e-6)
  for line in lines:
    xy = (line - low) / span * (size - 8) + 4
    xy[:, 1] = size - xy[:, 1]
    draw.line([tuple(p) for p in xy], fill=0, width=1)
    for p in xy if len(line) < 64 else ():
      draw.ellipse([p[0] - 1.5, p[1] - 1.5, p[0] + 1.5, p[1] + 1.5], fill=0)
  return np.asarray(canvas)[..., None]


def pdb_text(chains: np.ndarray) -> str:
  """A PDB file of chains [N, L, 3] (Å): one MODEL per chain, one Cα (GLY) per point."""
  lines = []
  for model, chain in enumerate(chains, 1):
    lines.append(f"MODEL     {model:4d}")
    for i, (x, y, z) in enumerate(chain, 1):
      lines.append(f"ATOM  {i:5d}  CA  GLY A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00"
                   "           C")
    lines.append("ENDMDL")
  return "\n".join(lines + ["END", ""])


def save_preview(path: epath.Path, samples: np.ndarray, spec: DataSpec) -> None:
  """Writes `path` (a PNG) for samples [N, *shape] in the data's units; point sets also get
  `path` with the suffix .pdb."""
  samples = np.asarray(samples)[:64]
  if spec.kind == "image":
    images.save_grid(path, _display(samples, spec))
  elif spec.kind == "volume":
    montage = volume_montage(_display(samples, spec)[:16])
    images.save_grid(path, montage.reshape(-1, *montage.shape[2:]), columns=3)
  elif spec.kind == "sequence":
    t = np.arange(samples.shape[1], dtype=np.float32)
    images.save_grid(path, np.stack([_plot([np.stack([t, s[:, 0]], -1)]) for s in samples]))
  else:
    images.save_grid(path, np.stack([_plot([s[:, :2]]) for s in samples]))
    if samples.shape[-1] == 3:
      paths.write_bytes(path.with_suffix(".pdb"), pdb_text(samples).encode())
