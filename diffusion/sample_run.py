"""`ddpm sample`: samples of a trained run as .npz (arr_0 in the data's units, labels) with a
preview beside it, or per-class PNG folders of images."""

import jax
import numpy as np

from diffusion import images, paths
from diffusion.distributed import make_mesh, replicate
from diffusion.previews import save_preview
from diffusion.runs import base_key, load_run
from diffusion.sampling import class_labels, in_batches, make_sampler

LAYOUTS = ("npz", "folders")


def sample_to_files(workdir: str, num: int, out: str, *, seed: int = 0, batch: int = 256,
                    step: int | None = None, sampler: str | None = None, steps: int | None = None,
                    eta: float = 0.0, spacing: str | None = None, guidance: float | None = None,
                    class_label: int | None = None, layout: str = "npz",
                    churn: float | None = None, sigmas=None,
                    guidance_interval: tuple[float, float] | None = None,
                    guide_workdir: str | None = None, guide_step: int | None = None
                    ) -> np.ndarray:
  """Draws `num` samples from a run; writes them in `layout` and returns them [num, *shape]
  in the data's units: uint8 for images (NHWC, the FID evaluators' format) and uint8 volumes,
  float32 otherwise (e.g. Å for coordinates).

  "npz": `out` gets arr_0 and labels, and a preview beside it (`previews.py`:
  a PNG grid for images, slices for volumes, plots for sequences, a plot and
  a PDB file for point sets). "folders" (images only): `out/` gets one PNG
  per sample, in a subfolder per class for a class-conditional model, the
  layout `config.data.name = "folder"` reads back (data augmentation).

  `guide_workdir` (and `guide_step`): autoguidance by that run's model with weight `guidance`
  (`load_guide`); `guidance_interval` limits guidance to the levels of EDM σ in (low, high).
  """
  if num < 1 or batch < 1:
    raise ValueError(f"`num` and `batch` must be positive; got {num} and {batch}")
  if layout not in LAYOUTS:
    raise ValueError(f"`layout` must be one of {', '.join(LAYOUTS)}; got {layout!r}")
  target = paths.resolve(out, "`out`")  # a scheme no backend serves fails before sampling
  if layout == "npz" and target.suffix.lower() != ".npz":
    raise ValueError(f"`out` {out!r} must end in .npz (arr_0 and labels; a preview PNG is "
                     "written beside it), or give `layout` folders for one PNG per sample")
  if layout == "folders":
    if target.suffix.lower() == ".npz":
      raise ValueError(f"`out` {out!r}: `layout` folders writes a folder of PNGs; give a "
                       "folder name")
    if target.exists() and target.is_dir() and any(target.iterdir()):
      raise ValueError(f"`out` {out!r} is a folder that already holds files; `layout` "
                       "folders writes into a new or empty folder (nothing is overwritten)")
  run = load_run(workdir, step, steps=steps)  # a progressive run: the round of `steps`
  model, step = run.model, run.step
  if model.cond_channels:
    raise ValueError(f"`workdir` {workdir!r}: this model is conditioned on an input "
                     f"(cond_channels = {model.cond_channels}): draw from it with `enhance` "
                     "(`ddpm enhance`), given the degraded data")
  spec = run.diffusion.spec
  if layout == "folders" and spec.kind != "image":
    raise ValueError(f"`layout` folders writes images; this run's data is {spec.kind} data: "
                     "use `layout` npz")
  guide = None if guide_workdir is None else load_guide(run, guide_workdir, guide_step)
  labels = class_labels(run, num, class_label, default="cycle")
  samples = draw_samples(run, labels, seed=seed, batch=batch, sampler=sampler, steps=steps,
                         eta=eta, spacing=spacing, guidance=guidance, churn=churn, sigmas=sigmas,
                         guidance_interval=guidance_interval, guide=guide,
                         desc=f"sample {sampler or run.method.default_sampler} (step {step})")
  if jax.process_index() == 0:
    write_samples(out, samples, labels, model.num_classes, layout, spec)
  return samples


def draw_samples(run, labels: np.ndarray, *, seed: int = 0, batch: int = 256,
                 sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
                 spacing: str | None = None, guidance: float | None = None,
                 churn: float | None = None, sigmas=None, variables=None,
                 guidance_interval: tuple[float, float] | None = None, guide=None,
                 desc: str = "sample") -> np.ndarray:
  """Samples [len(labels), *shape] in the data's units of a `runs.Run` (`load_run`'s; labels:
  classes, ignored by an unconditional model) with its variables (or `variables`), drawn
  `batch` at a time over every device with a progress bar (samples/s, ETA), each batch
  converted to the data's units as it arrives (`sampling.in_batches`). `guide`: a Run (with
  variables) whose model autoguides this one (`load_guide`)."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be a 1-D array, one class per sample (np.zeros(N, int) for an "
                     f"unconditional model); got {type(labels).__name__} of shape {labels.shape}")
  num = len(labels)
  mesh = make_mesh()
  spec = run.diffusion.spec
  variables = run.variables if variables is None else variables
  if variables is None:
    raise ValueError("`variables`: this run holds none (a Run read by `load_run` does); give "
                     "them")
  sample = make_sampler(run, mesh, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                        guidance=guidance, churn=churn, sigmas=sigmas,
                        guidance_interval=guidance_interval,
                        guide=None if guide is None else guide.model)
  if not num:
    return np.zeros((0, *spec.shape), np.float32)
  variables, key = replicate(variables, mesh), base_key(seed, "sample")
  extra = {} if guide is None else {"guide_variables": replicate(guide.variables, mesh)}
  bad = 0

  def convert(x):  # the check comes before the conversion, which would turn NaN into pixels
    nonlocal bad
    bad += int(np.sum(~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))))
    return spec.from_model(x)

  samples = in_batches(lambda first, rows: sample(variables, key, first, labels[rows], **extra),
                       num,
                       batch, mesh, desc=desc, unit="sample", convert=convert)
  if bad:
    raise ValueError(f"{bad} of {num} samples are not finite (NaN or inf): the network "
                     "diverged or the sampler's settings do not suit it; nothing was written")
  return samples


def load_guide(run, workdir: str, step: int | None = None, *, model=None):
  """The Run of `workdir` (checkpoint `step`, default the newest; `model` as `load_run`'s) as
  the autoguidance guide of `run`: a model of the same data, diffusion and method, taking the
  same conditioning (a smaller network, or the same trained for less)."""
  guide = load_run(workdir, step, model=model)
  checks = (("data", run.diffusion.spec, guide.diffusion.spec),
            ("diffusion", run.diffusion, guide.diffusion),
            ("method", run.method, guide.method),
            ("classes", run.model.num_classes, guide.model.num_classes))
  for what, ours, theirs in checks:
    if ours != theirs:
      raise ValueError(f"`guide_workdir` {workdir!r} holds a model of another {what} ({theirs}) "
                       f"than this run's ({ours}): a guide is a weaker model of the same data, "
                       "diffusion, method and conditioning")
  return guide


def write_samples(out: str, samples: np.ndarray, labels: np.ndarray, num_classes: int,
                  layout: str, spec) -> None:
  path = paths.resolve(out, "`out`")
  if layout == "npz":
    paths.save_npz(path, arr_0=samples, labels=labels)
    save_preview(path.with_suffix(".png"), samples, spec)
    return
  width = len(str(max(num_classes - 1, 0)))
  for i, (image, label) in enumerate(zip(samples, labels)):
    folder = path / f"{label:0{width}d}" if num_classes else path
    images.save_png(folder / f"{i:06d}.png", image)
