"""Consistency distillation and consistency training (Song et al. 2023; improved consistency
training, Song & Dhariwal 2023) as training methods: the math is `diffusion/consistency.py`.

Distillation pulls f_θ(x_{n+1}) towards the target network's f_θ⁻ at one Heun
step of a frozen teacher ("teacher"); training from data alone uses x_0 + σ_n z
instead, with N(k) and μ(k) growing over training (App. C), or improved
consistency training's choices: `curriculum` "doubling", `noise` "lognormal"
(`p_mean`, `p_std`; distillation too), `weighting` "inverse_gap" (λ = 1 /
(σ_{n+1} - σ_n); distillation too), μ0 = 0 and the "pseudo_huber" metric. The
target network θ⁻ ("target") is an EMA of θ. Both sample with the
multistep consistency chain.
"""

import jax
import jax.numpy as jnp

from diffusion import _checks, consistency, edm, spacing
from diffusion.methods.base import Method, register
from diffusion.methods.draws import draws, ema, few_step_config, uniform
from diffusion.methods.progressive import few_step_options


class _Consistency(Method):
  """What both consistency methods share: the σ grid, the loss, the sampler."""
  every_timestep = False
  default_sampler = "consistency"
  distilled = False

  def __init__(self, diffusion, *, sigma_data: float, metric: str, noise: str = "uniform",
               p_mean: float = -1.1, p_std: float = 2.0, weighting: str = "uniform",
               teacher_prediction: str = "eps"):
    super().__init__(diffusion)
    if metric not in consistency.METRICS:
      raise ValueError(f"config.distill.metric must be one of {consistency.METRICS}; got "
                       f"{metric!r}")
    _checks.positive(sigma_data, "config.distill.sigma_data")
    for key, value, allowed in (("noise", noise, ("uniform", "lognormal")),
                                ("weighting", weighting, ("uniform", "inverse_gap"))):
      if value not in allowed:
        raise ValueError(f"config.distill.{key} must be one of {allowed}; got {value!r}")
    if not p_std > 0:
      raise ValueError(f"config.distill.p_std must be > 0; got {p_std!r}")
    self.sigma_data, self.metric, self.noise = sigma_data, metric, noise
    self.p_mean, self.p_std, self.weighting = p_mean, p_std, weighting
    self.teacher_prediction = teacher_prediction

  @staticmethod
  def _shared(d) -> dict:
    return dict(sigma_data=d.sigma_data, metric=d.metric, noise=d.get("noise", "uniform"),
                p_mean=d.get("p_mean", -1.1), p_std=d.get("p_std", 2.0),
                weighting=d.get("weighting", "uniform"),
                teacher_prediction=d.get("teacher_prediction", "eps"))

  def _most(self) -> int:
    """The model's timesteps up to σ = 80."""
    return len(spacing.spaced_steps(self.diffusion.schedule, None, "karras"))

  def points(self, step):
    """N at train step `step`, int32."""
    raise NotImplementedError

  def _table(self):
    raise NotImplementedError

  def losses(self, step):
    schedule, x0 = self.diffusion.schedule, step.x0
    sigmas = jnp.asarray(edm.sigmas(schedule), jnp.float32)
    n = self.points(step.state.step)
    row = jnp.asarray(self._table())[n]
    if self.noise == "lognormal":
      logits = consistency.lognormal_logits(sigmas[row], n, self.p_mean, self.p_std)
      index = lambda key: jax.random.categorical(key, logits)
    else:
      index = uniform(0, n - 1)
    j, noise = draws(step.keys, x0.shape[1:], self.diffusion.spec.project, index)
    t_lo, t_hi = row[j], row[j + 1]
    student = consistency.consistency_fn(step.nets.student, schedule, self.sigma_data)
    # The target sees the student's dropout mask, as in the reference implementation (one
    # random state for both calls); the teacher runs without dropout.
    target = consistency.consistency_fn(step.nets.shadow("target"), schedule, self.sigma_data)
    teacher = None
    if self.distilled:
      teacher = edm.denoiser(step.nets.frozen("teacher"), schedule,
                             prediction=self.teacher_prediction, clip_x0=self.diffusion.clip_x0)
    distance = consistency.loss(student, target, schedule, x0, noise, t_lo, t_hi,
                                teacher_d=teacher, metric=self.metric)
    weight = 1 / (sigmas[t_hi] - sigmas[t_lo]) if self.weighting == "inverse_gap" else 1.0
    return {"loss": weight * distance, "distance": distance,
            "points": n.astype(jnp.float32) * jnp.ones_like(distance)}

  def sampler_options(self):
    return {"sigma_data": self.sigma_data}

  def most_steps(self) -> int:
    """The longest chain the model samples with: its grid's points - 1."""
    raise NotImplementedError

  def sampling_steps(self, sampler, steps, spacing_name, start, sigmas=None):
    few_step_options(self, sampler, spacing_name, start)
    if sampler.name != "consistency":
      raise ValueError(f"`sampler`: a consistency model samples with its own chain "
                       f"(`sampler` consistency); got {sampler.name!r}")
    schedule, most = self.diffusion.schedule, self.most_steps()
    if sigmas is not None:
      if steps is not None:
        raise ValueError("`sigmas` sets the chain's steps: give `steps` or `sigmas`, not both")
      return consistency.steps_at(schedule, sigmas, most)
    count = sampler.default_steps if steps is None else steps
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
      raise ValueError(f"`steps` must lie in [1, {most}] for this consistency model (it was "
                       f"trained on {most + 1} noise levels); got {count}")
    return consistency.sampling_steps(schedule, count)


@register
class ConsistencyDistillation(_Consistency):
  name = "consistency"
  extra = ("teacher", "target")
  needs_teacher = True
  distilled = True
  keys = ("num_points", "target_decay", "sigma_data", "metric")  # of config.distill
  example = "consistency_digits.py"

  def __init__(self, diffusion, num_points: int, target_decay: float, **shared):
    super().__init__(diffusion, **shared)
    most = self._most()
    if not 2 <= num_points <= most:
      raise ValueError(f"config.distill.num_points must lie in [2, {most}] (the model's "
                       f"timesteps up to σ = 80); got {num_points}")
    if not 0 <= target_decay < 1:
      raise ValueError(f"config.distill.target_decay must lie in [0, 1); got {target_decay}")
    self.num_points, self.target_decay = num_points, target_decay

  @classmethod
  def from_config(cls, config, diffusion):
    d = few_step_config(config, cls.keys, cls.name, cls.example)
    return cls(diffusion, d.num_points, d.target_decay, **cls._shared(d))

  @classmethod
  def student_config(cls, config):
    config.train.sample_sampler = "consistency"
    if config.distill.get("steps") is not None:  # the steps of its sample grids
      config.train.sample_steps = config.distill.steps

  def points(self, step):
    return jnp.int32(self.num_points)

  def _table(self):
    return consistency.grid_table(self.diffusion.schedule, self.num_points)

  def most_steps(self):
    return self.num_points - 1

  def update_extra(self, extra, params, step):
    return {**extra, "target": ema(extra["target"], params, jnp.float32(self.target_decay))}


@register
class ConsistencyTraining(_Consistency):
  name = "consistency_training"
  extra = ("target",)
  keys = ("s0", "s1", "mu0", "sigma_data", "metric")  # of config.distill
  example = "digits_ct.py"

  def __init__(self, diffusion, s0: int, s1: int, mu0: float, total_steps: int,
               curriculum: str = "sqrt", **shared):
    super().__init__(diffusion, **shared)
    most = self._most()
    if not 2 <= s0 <= s1 < most:
      raise ValueError(f"config.distill.s0 and s1 must satisfy 2 <= s0 <= s1 < {most} (the "
                       f"model's timesteps up to σ = 80); got {s0} and {s1}")
    if not 0 <= mu0 < 1:
      raise ValueError(f"config.distill.mu0 must lie in [0, 1); got {mu0}")
    if curriculum not in ("sqrt", "doubling"):
      raise ValueError(f"config.distill.curriculum must be 'sqrt' or 'doubling'; got "
                       f"{curriculum!r}")
    self.s0, self.s1, self.mu0, self.total_steps = s0, s1, mu0, total_steps
    self.curriculum = curriculum

  @classmethod
  def from_config(cls, config, diffusion):
    d = few_step_config(config, cls.keys, cls.name, cls.example)
    return cls(diffusion, d.s0, d.s1, d.mu0, config.train.num_steps,
               d.get("curriculum", "sqrt"), **cls._shared(d))

  def points(self, step):
    curriculum = {"sqrt": consistency.num_points,
                  "doubling": consistency.num_points_doubling}[self.curriculum]
    return curriculum(step, self.total_steps, self.s0, self.s1)

  def _table(self):
    return consistency.grid_table(self.diffusion.schedule, self.s1 + 1)

  def most_steps(self):
    return self.s1

  def update_extra(self, extra, params, step):
    decay = consistency.target_decay(self.points(step), self.s0, self.mu0)
    return {**extra, "target": ema(extra["target"], params, decay)}

