"""The programs `ddpm train`, `sample` and `evaluate` run, built by their own functions for a
`runs.Run` and a mesh, and lowered from shapes alone (no data, no parameters, no devices to run on).
"""

import dataclasses
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion import platforms
from diffusion.evaluation.inception import lower_features
from diffusion.evaluation.nll import make_bpd_fn
from diffusion.models import variables_of
from diffusion.sampling import make_sampler
from diffusion.runs import base_key
from diffusion.training.state import abstract_state, init_inputs
from diffusion.training.step import abstract_batch, make_train_step

PROGRAMS = ("train", "sample", "inception", "bpd")


@dataclasses.dataclass
class Program:
  """One lowered program: `examples` per call (over all devices), `scale` the work of a call
  over the work XLA counts (it counts a loop's body once: the loop's trips, or for a chain its
  network evaluations over those counted), `state` the train state's shapes and shardings
  (train only)."""
  name: str
  lowered: Any
  examples: int
  scale: float
  state: Any = None
  what: str = ""


def skipped(run, name: str) -> str | None:
  """Why `name` is no program of this `runs.Run`'s (None: it is one)."""
  spec = run.diffusion.spec
  if name == "inception" and (spec.kind != "image" or len(spec.shape) != 3
                              or spec.shape[-1] not in (1, 3)):
    return f"FID's Inception takes 2-D images of 1 or 3 channels; the data are {spec.shape}"
  if name == "bpd" and run.method.continuous:
    return f"bits/dim is a discrete DDPM's bound; method {run.method.name!r} is continuous"
  if name == "bpd" and spec.dtype != "uint8":
    return "bits/dim is defined on 8-bit data; config.data.dtype is not uint8"
  return None


def _variables(run, mesh):
  """The sampling variables (EMA parameters and the network's other collections), shapes."""
  state = abstract_state(run, mesh, init_inputs(run.model, run.diffusion.spec.shape))
  return variables_of(state.ema_params, state.model_state)


def lower(name: str, run, mesh, *, batch: int) -> Program:
  """The program `name` (one of PROGRAMS) of a `runs.Run` on `mesh`, for a global batch of
  `batch` examples (train: config.train.batch_size), lowered."""
  config = run.config
  if name == "train":
    k = config.train.get("steps_per_dispatch", 1)
    state = abstract_state(run, mesh, init_inputs(run.model, run.diffusion.spec.shape))
    step = make_train_step(run, mesh, state_sharding=jax.tree.map(lambda s: s.sharding, state))
    key = jax.eval_shape(lambda: base_key(0, "train"))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))
    lowered = step.lower(state, abstract_batch(run, mesh), key)
    kept = k > 1 and platforms.of_mesh(mesh) != "cpu"  # elsewhere the steps are unrolled
    return Program(name, lowered, examples=k * config.train.batch_size, scale=k if kept else 1,
                   state=state, what=f"{k} train step{'s' if k > 1 else ''} a dispatch")
  if name == "sample":
    sampler = make_sampler(run, mesh)
    return Program(name, sampler.lower(_variables(run, mesh), batch), examples=batch,
                   scale=sampler.evaluations / sampler.counted_evaluations,
                   what=f"a chain of {sampler.evaluations} network evaluations")
  if name == "inception":
    return Program(name, lower_features(mesh, batch, run.diffusion.spec.shape[:2]),
                   examples=batch, scale=1, what="FID Inception features")
  if name == "bpd":
    bpd = make_bpd_fn(run, mesh)
    return Program(name, bpd.lower(_variables(run, mesh), batch), examples=batch,
                   scale=bpd.loop_trips, what=f"the bound's T terms, {bpd.loop_trips} chunks")
  raise ValueError(f"`programs`: unknown program {name!r}; choose from {', '.join(PROGRAMS)}")
