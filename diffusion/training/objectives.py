"""The few-step objectives a train step can minimise instead of the DDPM's (config.distill):

- "progressive": progressive distillation (`progressive.py`), the teacher's
  parameters frozen in the state, replaced by the student's EMA every
  `round_steps` steps, when the student restarts (optimizer and EMA) at half
  the steps;
- "consistency": consistency distillation from a frozen teacher, with a
  target network θ⁻ (EMA of θ with decay `target_decay`);
- "consistency_training": consistency training from data alone, N(k) and
  μ(k) growing as in Song et al. App. C, or with improved consistency training's
  choices (Song & Dhariwal 2023): `curriculum` "doubling", `noise` "lognormal"
  (`p_mean`, `p_std`; distillation too), `weighting` "inverse_gap" (λ = 1 /
  (σ_{n+1} - σ_n); distillation too), μ0 = 0 and the "pseudo_huber" metric.

The state carries the frozen or slowly moving parameter trees in
`TrainState.extra` ("teacher", "target"). Every random draw of example i
comes from its own key, as in the DDPM step, so 8 devices compute what 1 does.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion import consistency, edm, progressive, samplers
from diffusion.config import clip_x0, distill_method
from diffusion.forward import q_sample
from diffusion.parameterization import x0_from_prediction, x0_from_v
from diffusion.schedules import Schedule

METHODS = ("", "progressive", "consistency", "consistency_training")
WITH_TEACHER = ("progressive", "consistency")
# The keys of config.distill each method reads, and a config that has them.
KEYS = {"progressive": (("teacher_steps", "steps", "round_steps"), "distill_digits.py"),
        "consistency": (("num_points", "target_decay", "sigma_data", "metric"),
                        "consistency_digits.py"),
        "consistency_training": (("s0", "s1", "mu0", "sigma_data", "metric"), "digits_ct.py")}


method = distill_method


def extra_names(config) -> tuple[str, ...]:
  """The parameter trees a run of this config carries beside its own ("teacher", "target")."""
  return {"": (), "progressive": ("teacher",), "consistency": ("teacher", "target"),
          "consistency_training": ("target",)}[method(config)]


@dataclasses.dataclass(frozen=True)
class Nets:
  """The networks an objective calls, each (x_t [B, ..., C], t int [B]) -> output: the
  student (training mode, its parameters differentiated) and the frozen trees by name, in
  inference mode (`frozen`) or in training mode with the student's dropout mask (`shadow`)."""
  student: Callable[[jax.Array, jax.Array], jax.Array]
  frozen: Callable[[str], Callable[[jax.Array, jax.Array], jax.Array]]
  shadow: Callable[[str], Callable[[jax.Array, jax.Array], jax.Array]]


@dataclasses.dataclass(frozen=True)
class Objective:
  """losses(nets, x0 [B, ...], keys [B], step) -> {"loss": [B], ...}; prepare(state, tx) ->
  state at the start of a step; update_extra(extra, params, step) -> extra after an update;
  local_step(step, applied) -> the step the lr and EMA schedules follow."""
  losses: Callable[..., dict]
  prepare: Callable[[Any, Any], Any] = lambda state, tx: state
  update_extra: Callable[[dict, Any, jax.Array], dict] = lambda extra, params, step: extra
  local_step: Callable[[jax.Array, jax.Array], jax.Array] = lambda step, applied: applied


def _draws(keys, shape, project, index):
  """Per example: an int `index(key)` and N(0, I) noise of `shape`, each from its own key."""
  def one(key):
    key_i, key_n = jax.random.split(key)
    return index(key_i), project(jax.random.normal(key_n, shape))
  return jax.vmap(one)(keys)


def _uniform(low, high):
  """An index sampler for `_draws`: uniform on [low, high)."""
  return lambda key: jax.random.randint(key, (), low, high)


def _ema(old, new, decay):
  return jax.tree.map(lambda o, n: decay * o + (1 - decay) * n, old, new)


def make(config, schedule: Schedule, project: Callable = lambda x: x) -> Objective:
  """The Objective of config.distill (its method must not be "")."""
  name = method(config)
  if name == "progressive":
    return _progressive(config, schedule, project)
  if name in ("consistency", "consistency_training"):
    return _consistency(config, schedule, project, name == "consistency")
  raise ValueError(f"config.distill.method must be one of {METHODS[1:]}; got {name!r}")


def _progressive(config, schedule, project) -> Objective:
  d = config.distill
  teacher_steps, round_steps = d.teacher_steps, d.round_steps
  num_rounds = progressive.rounds(teacher_steps, d.steps)
  grid = jnp.asarray(progressive.base_grid(schedule.num_steps, teacher_steps))
  clip = clip_x0(config)
  first_prediction = d.teacher_prediction

  def round_of(step):
    return jnp.minimum(step // round_steps, num_rounds - 1)

  def losses(nets, x0, keys, step):
    r = round_of(step)
    stride = jnp.left_shift(1, r)
    i, noise = _draws(keys, x0.shape[1:], project,
                      _uniform(1, 1 + teacher_steps // (2 * stride)))
    t, t_mid, t_next = progressive.round_timesteps(grid, stride, i)
    z = q_sample(schedule, x0, t, noise)
    c = x0.shape[-1]

    def teacher_x0(z, t):
      out = nets.frozen("teacher")(z, t)[..., :c]
      as_v = x0_from_v(schedule, z, t, out)
      if first_prediction == "v":
        return as_v
      return jnp.where(r == 0, x0_from_prediction(schedule, first_prediction, z, t, out), as_v)

    x_tilde = jax.lax.stop_gradient(progressive.target(schedule, teacher_x0, z, t, t_mid,
                                                       t_next, clip_x0=clip))
    x_hat = x0_from_v(schedule, z, t, nets.student(z, t)[..., :c])
    err = jnp.mean(((x_tilde - x_hat).astype(jnp.float32) ** 2).reshape(len(t), -1), axis=1)
    return {"loss": progressive.snr_weight(schedule, t) * err, "mse": err,
            "round": r.astype(jnp.float32) * jnp.ones_like(err)}

  def prepare(state, tx):
    """At each round's first step: the student's EMA teaches, and the student starts from it
    with a fresh optimizer."""
    def next_round(state):
      ema = state.ema_params
      return state.replace(params=ema, opt_state=tx.init(ema),
                           extra={**state.extra, "teacher": ema})
    boundary = (state.step > 0) & (state.step % round_steps == 0) & (
        state.step < num_rounds * round_steps)
    return jax.lax.cond(boundary, next_round, lambda s: s, state)

  return Objective(losses, prepare=prepare,
                   local_step=lambda step, applied: step - round_of(step) * round_steps)


def _consistency(config, schedule, project, distill: bool) -> Objective:
  d = config.distill
  sigma_data, metric = d.sigma_data, d.metric
  clip = clip_x0(config)
  sigmas = jnp.asarray(edm.sigmas(schedule), jnp.float32)
  if distill:
    table = jnp.asarray(consistency.grid_table(schedule, d.num_points))
    points = lambda step: jnp.int32(d.num_points)
  else:
    total = config.train.num_steps
    table = jnp.asarray(consistency.grid_table(schedule, d.s1 + 1))
    curriculum = {"sqrt": consistency.num_points,
                  "doubling": consistency.num_points_doubling}[d.get("curriculum", "sqrt")]
    points = lambda step: curriculum(step, total, d.s0, d.s1)
  lognormal = d.get("noise", "uniform") == "lognormal"
  inverse_gap = d.get("weighting", "uniform") == "inverse_gap"

  def losses(nets, x0, keys, step):
    n = points(step)
    row = table[n]
    if lognormal:
      logits = consistency.lognormal_logits(sigmas[row], n, d.get("p_mean", -1.1),
                                            d.get("p_std", 2.0))
      index = lambda key: jax.random.categorical(key, logits)
    else:
      index = _uniform(0, n - 1)
    j, noise = _draws(keys, x0.shape[1:], project, index)
    t_lo, t_hi = row[j], row[j + 1]
    student = consistency.consistency_fn(nets.student, schedule, sigma_data)
    # The target sees the student's dropout mask, as in the reference implementation (one
    # random state for both calls); the teacher runs without dropout.
    target = consistency.consistency_fn(nets.shadow("target"), schedule, sigma_data)
    teacher = None
    if distill:
      teacher = edm.denoiser(nets.frozen("teacher"), schedule,
                             prediction=d.teacher_prediction, clip_x0=clip)
    distance = consistency.loss(student, target, schedule, x0, noise, t_lo, t_hi,
                                teacher_d=teacher, metric=metric)
    weight = 1 / (sigmas[t_hi] - sigmas[t_lo]) if inverse_gap else 1.0
    return {"loss": weight * distance, "distance": distance,
            "points": n.astype(jnp.float32) * jnp.ones_like(distance)}

  def update_extra(extra, params, step):
    decay = (jnp.float32(d.target_decay) if distill
             else consistency.target_decay(points(step), d.s0, d.mu0))
    return {**extra, "target": _ema(extra["target"], params, decay)}

  return Objective(losses, update_extra=update_extra)


def check(config, schedule: Schedule) -> None:
  """config.distill's values, checked before anything compiles (each error names its key)."""
  name = method(config)
  if name not in METHODS:
    raise ValueError(f"config.distill.method must be one of {', '.join(map(repr, METHODS))}; "
                     f"got {name!r}")
  if not name:
    return
  d, num_steps = config.distill, schedule.num_steps
  keys, example = KEYS[name]
  missing = [k for k in keys if k not in d]
  if missing:
    raise ValueError(f"config.distill has no {', '.join(missing)}, which method {name!r} needs "
                     f"(see experiments/configs/{example})")
  if config.diffusion.get("timestep_sampler", "uniform") != "uniform":
    raise ValueError("config.diffusion.timestep_sampler must be 'uniform' with config.distill")
  if name == "progressive":
    progressive.rounds(d.teacher_steps, d.steps)
    progressive.base_grid(num_steps, d.teacher_steps)
    if not isinstance(d.round_steps, int) or d.round_steps < 1:
      raise ValueError(f"config.distill.round_steps must be a positive int; got "
                       f"{d.round_steps!r}")
    total = progressive.rounds(d.teacher_steps, d.steps) * d.round_steps
    if config.train.num_steps > total:
      raise ValueError(f"config.train.num_steps must not exceed rounds x config.distill."
                       f"round_steps = {total}; got {config.train.num_steps}")
    return
  if d.metric not in consistency.METRICS:
    raise ValueError(f"config.distill.metric must be one of {consistency.METRICS}; got "
                     f"{d.metric!r}")
  if not d.sigma_data > 0:
    raise ValueError(f"config.distill.sigma_data must be > 0; got {d.sigma_data!r}")
  most = len(samplers.spaced_steps(schedule, None, "karras"))  # the timesteps up to σ = 80
  if name == "consistency":
    if not 2 <= d.num_points <= most:
      raise ValueError(f"config.distill.num_points must lie in [2, {most}] (the model's "
                       f"timesteps up to σ = 80); got {d.num_points}")
    if not 0 <= d.target_decay < 1:
      raise ValueError(f"config.distill.target_decay must lie in [0, 1); got {d.target_decay}")
  else:
    if not 2 <= d.s0 <= d.s1 < most:
      raise ValueError(f"config.distill.s0 and s1 must satisfy 2 <= s0 <= s1 < {most} (the "
                       f"model's timesteps up to σ = 80); got {d.s0} and {d.s1}")
    if not 0 <= d.mu0 < 1:
      raise ValueError(f"config.distill.mu0 must lie in [0, 1); got {d.mu0}")
    if d.get("curriculum", "sqrt") not in ("sqrt", "doubling"):
      raise ValueError(f"config.distill.curriculum must be 'sqrt' or 'doubling'; got "
                       f"{d.curriculum!r}")
  for key, allowed in (("noise", ("uniform", "lognormal")),
                       ("weighting", ("uniform", "inverse_gap"))):
    if d.get(key, allowed[0]) not in allowed:
      raise ValueError(f"config.distill.{key} must be one of {allowed}; got {d[key]!r}")
  if not d.get("p_std", 2.0) > 0:
    raise ValueError(f"config.distill.p_std must be > 0; got {d.p_std!r}")

