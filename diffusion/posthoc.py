"""Post-hoc EMA (Karras et al. 2024, App. C): the parameters averaged at any σ_rel, rebuilt after
training from a run's snapshots of its power-function EMAs (`runs.EmaSnapshots`, kept with
config.train.power_ema and ema_snapshot_every), and written as a run folder that `ddpm
sample` and `ddpm evaluate` read.

  recon = reconstruct("runs/digits", 0.08)              # the newest snapshot's time
  write_run("runs/digits", "runs/digits_ema08", recon)
"""

import dataclasses
import json
import os

import jax
import numpy as np

from diffusion import paths, power_ema
from diffusion.runs import Checkpoints, EmaSnapshots


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """The average of σ_rel `sigma_rel` at snapshot `step` (after `t` applied updates)."""
  params: dict            # the parameter tree, NumPy, the snapshots' dtypes
  sigma_rel: float
  step: int
  t: int
  sources: list           # (snapshot step, profile name) of each coefficient
  coefficients: np.ndarray  # float64 [S]
  error: float            # ‖Σ x_i p_i − p‖ / ‖p‖ of the profiles (`power_ema.profile_error`)


def snapshot_steps(workdir: str) -> list[int]:
  """The steps of a run's EMA snapshots (a ValueError naming `workdir` if it has none)."""
  directory = paths.resolve(workdir, "`workdir`") / "ema_snapshots"
  if not directory.exists():
    raise ValueError(f"`workdir` {workdir!r} holds no EMA snapshots (ema_snapshots/): train it "
                     "with config.train.power_ema (e.g. (0.05, 0.10)) and "
                     "config.train.ema_snapshot_every > 0")
  snapshots = EmaSnapshots(workdir, read_only=True)
  try:
    steps = snapshots.steps()
  finally:
    snapshots.close()
  if not steps:
    raise ValueError(f"`workdir` {workdir!r} holds no complete EMA snapshot yet")
  return steps


def reconstruct(workdir: str, sigma_rel: float, step: int | None = None) -> Reconstruction:
  """The parameters averaged with the power profile of `sigma_rel` at snapshot `step` (default:
  the newest), as the least-squares combination of the snapshots up to it."""
  return reconstruct_all(workdir, [sigma_rel], step)[0]


def reconstruct_all(workdir: str, sigma_rels, step: int | None = None) -> list[Reconstruction]:
  """`reconstruct` for each of `sigma_rels`, reading each snapshot once (a sweep's cost in
  I/O is one pass over the snapshots, whatever the number of σ_rel)."""
  gammas_wanted = [power_ema.gamma_of(s) for s in sigma_rels]
  steps = snapshot_steps(workdir)
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"`step` {step} has no EMA snapshot; the snapshots are at steps "
                     f"{_listed(steps)}")
  snapshots = EmaSnapshots(workdir, read_only=True)
  try:
    used = [s for s in steps if s <= step]
    metas = {s: snapshots.meta(s) for s in used}
    sources, ts, gammas = [], [], []
    for s in used:
      for name, sigma in sorted(metas[s]["sigma_rels"].items()):
        sources.append((s, name))
        ts.append(metas[s]["t"])
        gammas.append(power_ema.gamma_of(float(sigma)))
    t = metas[step]["t"]
    if min(ts) <= 0:
      raise ValueError(f"`workdir` {workdir!r}: a snapshot was taken before any update")
    xs = [power_ema.coefficients(ts, gammas, t, g) for g in gammas_wanted]
    totals, dtypes = [None] * len(xs), None
    for s in used:
      profiles = snapshots.restore(s)
      for i, (source_step, name) in enumerate(sources):
        if source_step != s:
          continue
        tree = jax.tree.map(lambda a: np.asarray(a, np.float64), profiles[name])
        dtypes = dtypes or jax.tree.map(lambda a: np.asarray(a).dtype, profiles[name])
        for j, x in enumerate(xs):
          term = jax.tree.map(lambda a, c=x[i]: c * a, tree)
          totals[j] = term if totals[j] is None else jax.tree.map(np.add, totals[j], term)
  finally:
    snapshots.close()
  return [Reconstruction(jax.tree.map(lambda a, d: a.astype(d), total, dtypes), float(sigma),
                         step, int(t), sources, x,
                         power_ema.profile_error(ts, gammas, x, t, gamma))
          for sigma, gamma, x, total in zip(sigma_rels, gammas_wanted, xs, totals)]


def _listed(steps: list[int]) -> str:
  return ", ".join(map(str, steps)) if len(steps) <= 8 else (
      f"{', '.join(map(str, steps[:3]))}, ..., {', '.join(map(str, steps[-3:]))}")


def write_run(workdir: str, out: str, recon: Reconstruction) -> str:
  """A run folder at `out` for sampling and evaluation: one checkpoint, at the
  reconstruction's step, whose EMA parameters are `recon.params` (the rest, the training
  parameters and optimizer state, is `workdir`'s newest checkpoint's), and
  `posthoc_ema.json`, what was combined. Returns `out`. `out` must hold no checkpoints."""
  if Checkpoints.any_in(out):
    raise ValueError(f"`out` {out!r} already holds checkpoints: give a new folder")
  source = Checkpoints(workdir, read_only=True)
  try:
    newest = source.latest_step()
    if newest is None:
      raise ValueError(f"`workdir` {workdir!r} holds no checkpoint")
    saved = source.manager.item_metadata(newest).state
    state = {name: source.restore_part(name, newest) for name in saved
             if name != "power_emas"}
    config = source.restore_config(newest)
    position = source.restore_position(newest)
  finally:
    source.close()
  state["ema_params"] = recon.params
  state["step"] = np.asarray(recon.step, np.asarray(state["step"]).dtype)
  with config.unlocked():  # the folder keeps no power EMAs of its own
    config.train.power_ema = ()
    config.train.ema_snapshot_every = 0
  target = Checkpoints(out)
  try:
    target.save(recon.step, state, position, config, force=True)
  finally:
    target.close()
  note = {"source": os.fspath(paths.resolve(workdir, "`workdir`")), "sigma_rel": recon.sigma_rel,
          "step": recon.step, "t": recon.t, "profile_error": recon.error,
          "coefficients": [{"step": s, "profile": name, "x": float(c)}
                           for (s, name), c in zip(recon.sources, recon.coefficients)]}
  paths.write_bytes(paths.resolve(out, "`out`") / "posthoc_ema.json",
                    json.dumps(note, indent=2).encode())
  return out
