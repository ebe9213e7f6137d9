"""Progressive distillation (Salimans & Ho 2022) as a training method: the math is
`diffusion/progressive.py`.

The teacher's parameters are frozen in the state ("teacher"), replaced by the
student's EMA every `round_steps` steps, when the student restarts (optimizer
and EMA) at half the steps. The student predicts v and samples with DDIM over
its own K steps.
"""

import jax
import jax.numpy as jnp

from diffusion import progressive
from diffusion.forward import q_sample
from diffusion.methods.base import Method, register
from diffusion.methods.draws import draws, few_step_config, uniform
from diffusion.parameterization import x0_from_prediction, x0_from_v

@register
class Progressive(Method):
  name = "progressive"
  extra = ("teacher",)
  needs_teacher = True
  every_timestep = False
  default_sampler = "ddim"
  keys = ("teacher_steps", "steps", "round_steps")  # what it reads of config.distill
  example = "distill_digits.py"  # a config with them

  def __init__(self, diffusion, teacher_steps: int, steps: int, round_steps: int,
               teacher_prediction: str = "eps"):
    super().__init__(diffusion)
    self.num_rounds = progressive.rounds(teacher_steps, steps)
    progressive.base_grid(diffusion.num_steps, teacher_steps)
    if isinstance(round_steps, bool) or not isinstance(round_steps, int) or round_steps < 1:
      raise ValueError(f"config.distill.round_steps must be a positive int; got {round_steps!r}")
    self.teacher_steps, self.steps, self.round_steps = teacher_steps, steps, round_steps
    self.teacher_prediction = teacher_prediction

  @classmethod
  def from_config(cls, config, diffusion):
    d = few_step_config(config, cls.keys, cls.name, cls.example)
    return cls(diffusion, d.teacher_steps, d.steps, d.round_steps,
               d.get("teacher_prediction", "eps"))

  @classmethod
  def student_config(cls, config):
    d = config.distill
    config.diffusion.prediction = "v"
    config.train.num_steps = progressive.rounds(d.teacher_steps, d.steps) * d.round_steps
    # Each round anneals its lr to 0 (the paper: linearly; here along a half cosine): the
    # optimizer restarts at every round, and with it the schedule.
    config.optim.decay_steps = d.round_steps
    config.train.sample_sampler = "ddim"
    config.train.sample_steps = 0
    # Every round's student is kept: sampling with K steps reads the round that made it.
    if d.round_steps % config.train.checkpoint_every:
      config.train.checkpoint_every = d.round_steps
    config.train.keep_checkpoints = None

  def with_steps(self, steps: int) -> "Progressive":
    """The method of this run's student of `steps` steps (an earlier round's)."""
    return Progressive(self.diffusion, self.teacher_steps, steps, self.round_steps,
                       self.teacher_prediction)

  def held(self, checkpoint: int) -> int:
    """The steps of the student checkpoint `checkpoint` holds: that of round
    min((checkpoint - 1) // round_steps, rounds - 1) + 1."""
    return self.teacher_steps >> (min(max(checkpoint - 1, 0) // self.round_steps,
                                      self.num_rounds - 1) + 1)

  def checkpoint_for(self, kept, at, given, steps):
    """Each round halves the steps, and the run keeps every round's checkpoint: for `steps` K,
    the checkpoint at the end of the round that made the K-step student (the newest, if it
    holds that student); without, the student checkpoint `at` holds; a checkpoint given and K
    must agree."""
    if steps is None:
      return at, self.with_steps(self.held(at))
    reachable = [self.teacher_steps >> i for i in range(1, self.num_rounds + 1)]
    if steps not in reachable:
      raise ValueError(f"`steps` {steps}: this progressive run made students of {reachable} "
                       "steps")
    want = (reachable.index(steps) + 1) * self.round_steps
    if given and self.held(at) != steps:
      raise ValueError(f"`step` {at} holds the {self.held(at)}-step student, not the "
                       f"{steps}-step one (its round ended at step {want})")
    if given or self.held(at) == steps:
      return at, self.with_steps(steps)
    if want not in kept:
      raise ValueError(f"`steps` {steps}: the checkpoint of its round (step {want}) is not "
                       f"among the run's (kept: {kept})")
    return want, self.with_steps(steps)

  def check(self, config):
    total = self.num_rounds * self.round_steps
    if config.train.num_steps > total:
      raise ValueError(f"config.train.num_steps must not exceed rounds x config.distill."
                       f"round_steps = {total}; got {config.train.num_steps}")

  def _round(self, step):
    return jnp.minimum(step // self.round_steps, self.num_rounds - 1)

  def losses(self, step):
    schedule, x0 = self.diffusion.schedule, step.x0
    grid = jnp.asarray(progressive.base_grid(schedule.num_steps, self.teacher_steps))
    r = self._round(step.state.step)
    stride = jnp.left_shift(1, r)
    i, noise = draws(step.keys, x0.shape[1:], self.diffusion.spec.project,
                     uniform(1, 1 + self.teacher_steps // (2 * stride)))
    t, t_mid, t_next = progressive.round_timesteps(grid, stride, i)
    z = q_sample(schedule, x0, t, noise)
    c = x0.shape[-1]

    def teacher_x0(z, t):
      out = step.nets.frozen("teacher")(z, t)[..., :c]
      as_v = x0_from_v(schedule, z, t, out)
      if self.teacher_prediction == "v":
        return as_v
      return jnp.where(r == 0, x0_from_prediction(schedule, self.teacher_prediction, z, t, out),
                       as_v)

    x_tilde = jax.lax.stop_gradient(progressive.target(
        schedule, teacher_x0, z, t, t_mid, t_next, clip_x0=self.diffusion.clip_x0))
    x_hat = x0_from_v(schedule, z, t, step.nets.student(z, t)[..., :c])
    err = jnp.mean(((x_tilde - x_hat).astype(jnp.float32) ** 2).reshape(len(t), -1), axis=1)
    return {"loss": progressive.snr_weight(schedule, t) * err, "mse": err,
            "round": r.astype(jnp.float32) * jnp.ones_like(err)}

  def prepare(self, state, tx):
    """At each round's first step: the student's EMA teaches, and the student starts from it
    with a fresh optimizer."""
    def next_round(state):
      ema = state.ema_params
      return state.replace(params=ema, opt_state=tx.init(ema),
                           extra={**state.extra, "teacher": ema})
    boundary = (state.step > 0) & (state.step % self.round_steps == 0) & (
        state.step < self.num_rounds * self.round_steps)
    return jax.lax.cond(boundary, next_round, lambda s: s, state)

  def local_step(self, step, applied):  # a round restarts the lr and EMA schedules
    return step - self._round(step) * self.round_steps

  def sampling_steps(self, sampler, steps, spacing_name, start, sigmas=None):
    few_step_options(self, sampler, spacing_name, start)
    if sigmas is not None:
      raise ValueError("`sigmas` sets the noise levels of a consistency model's chain, and this "
                       "run is not one: use `steps` and `spacing`")
    if sampler.name != "ddim":
      raise ValueError(f"`sampler`: a progressively distilled student samples with ddim over "
                       f"its own {self.steps} steps; got {sampler.name!r}")
    if steps not in (None, self.steps):
      raise ValueError(f"`steps`: this student was distilled to {self.steps} steps, so it "
                       f"samples in exactly {self.steps}; got {steps}")
    return progressive.student_steps(self.diffusion.num_steps, self.teacher_steps, self.steps)


def few_step_options(method: Method, sampler, spacing_name, start) -> None:
  """A few-step model neither starts part-way (the applications) nor takes a spacing."""
  if start is not None:
    raise ValueError(f"this run is a few-step model (method {method.name!r}), trained at a few "
                     "noise levels only: the applications need a model of every timestep, e.g. "
                     "its teacher's `workdir`")
  if spacing_name is not None:
    raise ValueError(f"`spacing`: a few-step model (method {method.name!r}) visits its own "
                     "timesteps")


def student_round(teacher_steps: int, steps: int, round_steps: int, checkpoint: int) -> int:
  """The steps of the student that checkpoint `checkpoint` of a progressive run holds: round
  min((checkpoint - 1) // round_steps, rounds - 1) + 1 halved the teacher's steps that often."""
  made = progressive.rounds(teacher_steps, steps)
  return teacher_steps >> (min(max(checkpoint - 1, 0) // round_steps, made - 1) + 1)

