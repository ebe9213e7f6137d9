"""Flow matching / rectified flow as a training method (the math: `diffusion/flow.py`).

The network predicts the velocity ε − x_0 of the straight path x_t = (1 − t) x_0 + t ε at
t drawn uniformly or logit-normally (`times`, SD3's m, s); it is given 1000 t, so that its
timestep embedding spans the range a DDPM's does. It samples with Euler (default, 50 steps)
or Heun on dx/dt = v(x, t) from t = 1, x ~ N(0, I), to t = 0 over `flow.time_grid` (with
SD3's `shift`). Settings: `config.flow` (times, m, s, shift).
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import _checks, flow
from diffusion.methods.base import Method, register

SCALE = 1000.0  # the network's conditioning is SCALE · t


def _label_dropout(keys, labels, num_classes, rate):
  """The null class (`num_classes`) for a fraction `rate` of the examples, each drawn from its
  own key (classifier-free guidance's training)."""
  if not num_classes or not rate:
    return labels
  drop = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 2), rate))(keys)
  return jnp.where(drop, num_classes, labels)


@register
class FlowMatching(Method):
  name = "flow"
  continuous = True
  default_sampler = "euler"

  def __init__(self, diffusion, times: str = "logit_normal", m: float = 0.0, s: float = 1.0,
               shift: float = 1.0, label_dropout: float = 0.0):
    super().__init__(diffusion)
    _checks.choice(times, flow.TIMES, "config.flow.times")
    _checks.positive(s, "config.flow.s")
    _checks.positive(shift, "config.flow.shift")
    self.times, self.m, self.s, self.shift = times, m, s, shift
    self.label_dropout = label_dropout

  @classmethod
  def from_config(cls, config, diffusion):
    f = config.get("flow") or {}
    return cls(diffusion, f.get("times", "logit_normal"), f.get("m", 0.0), f.get("s", 1.0),
               f.get("shift", 1.0), config.train.get("label_dropout", 0.0))

  def conditioning(self, level):
    return SCALE * level

  def noise_sigma(self, conditioning):
    return flow.to_sigma(conditioning / SCALE)

  def labels(self, keys, labels, num_classes):
    return _label_dropout(keys, labels, num_classes, self.label_dropout)

  def losses(self, step):
    x0 = step.x0

    def draws(key):
      key_t, key_noise = jax.random.split(key)[:2]
      t = flow.sample_times(key_t, (), self.times, self.m, self.s)
      return t, self.diffusion.spec.project(jax.random.normal(key_noise, x0.shape[1:]))

    t, noise = jax.vmap(draws)(step.keys)
    student = lambda x_t, t: step.nets.student(x_t, self.conditioning(t))[..., :x0.shape[-1]]
    err = flow.loss(student, x0, noise, t)
    return {"loss": err, "mse": err}

  def field(self, network):
    c = self.diffusion.spec.shape[-1]
    return lambda x, t: network(x, self.conditioning(t))[..., :c].astype(x.dtype)

  def prior_scale(self, level):
    return 1.0

  def ode_span(self):
    return 0.0, 1.0

  def denoiser(self, network):
    field = self.field(network)
    return lambda x, t: flow.x0_from_velocity(x, t, field(x, t)).astype(x.dtype)

  def path(self, level):
    return 1.0 - float(level), float(level)

  def level_of(self, ratio):
    return float(flow.from_sigma(ratio))

  def sampling_steps(self, sampler, steps, spacing_name, start, sigmas=None):
    return flow.time_grid(continuous_steps(self, sampler, steps, spacing_name, start, sigmas),
                          self.shift)


def continuous_steps(method, sampler, steps, spacing_name, start, sigmas) -> int:
  """The number of steps of a continuous method's chain, after refusing what it does not take:
  a start part-way (the applications), a spacing (its grid is its own), `sigmas`."""
  if start is not None:
    raise ValueError(f"method {method.name!r} trains on continuous noise levels: the "
                     "applications, written for a discrete DDPM, need a DDPM run")
  if spacing_name is not None:
    raise ValueError(f"`spacing`: method {method.name!r} samples on its own grid of noise levels")
  if sigmas is not None:
    raise ValueError("`sigmas` sets the noise levels of a consistency model's chain, and this "
                     "run is not one: use `steps`")
  count = sampler.default_steps if steps is None else steps
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
    raise ValueError(f"`steps` must be a positive int; got {count!r}")
  return int(count)
