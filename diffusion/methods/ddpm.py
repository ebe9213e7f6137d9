"""DDPM's training (Ho et al. 2020, Algorithm 1) and improved DDPM's (Nichol & Dhariwal 2021):
L_simple, L_vlb or L_hybrid over uniform or importance-sampled timesteps, with classifier-free
guidance's label dropout (Ho & Salimans 2022)."""

import jax
import jax.numpy as jnp

from diffusion import _checks
from diffusion.losses import LOSSES, min_snr_weight, training_losses
from diffusion.methods.base import Method, register

HISTORY = 10  # losses kept per timestep by the importance sampler (improved DDPM)
UNIFORM_MIX = 0.001  # improved DDPM keeps this much of the uniform distribution


def timestep_probs(state) -> jax.Array:
  """Importance sampling of t (improved DDPM, Sec. 3.3): p_t ∝ sqrt(E[L_t²]).

  Uniform until every t has HISTORY losses. Returns float32 [T].
  """
  num_steps = state.loss_count.shape[0]
  second_moment = jnp.sqrt(jnp.mean(state.loss_history ** 2, axis=1))
  probs = second_moment / jnp.sum(second_moment)
  probs = probs * (1 - UNIFORM_MIX) + UNIFORM_MIX / num_steps
  warm = jnp.all(state.loss_count >= HISTORY) & jnp.all(jnp.isfinite(probs))
  return jnp.where(warm, probs, 1.0 / num_steps)


def record_losses(state, t: jax.Array, losses: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pushes each (t_i, loss_i) into the ring buffer of its timestep, in batch order.

  t: int [B], losses: float32 [B]. One scatter with the result of pushing the
  pairs one by one: the i-th occurrence of a timestep in the batch goes to
  slot (count + i) mod HISTORY, and of a timestep drawn more than HISTORY
  times only the last HISTORY occurrences are written (the earlier ones would
  be overwritten), so no two writes share a slot, whose order XLA leaves undefined.
  """
  num_steps = state.loss_count.shape[0]
  order = jnp.argsort(t, stable=True)
  sorted_t = t[order]
  first = jnp.searchsorted(sorted_t, sorted_t, side="left")
  rank = jnp.zeros_like(t).at[order].set(jnp.arange(t.shape[0]) - first)  # occurrence number
  drawn = jnp.bincount(t, length=num_steps)
  kept = rank >= drawn[t] - HISTORY
  slot = (state.loss_count[t] + rank) % HISTORY
  row = jnp.where(kept, t, num_steps)  # out of bounds: dropped
  history = state.loss_history.at[row, slot].set(losses, mode="drop")
  return history, state.loss_count + drawn.astype(state.loss_count.dtype)


def _keys(key):
  """Example i's four keys: its timestep's, its noise's, (once dropout's, unused: the draws
  stay as they were), its label's."""
  return jax.random.split(key, 4)


@register
class DDPM(Method):
  """The network predicts ε, x_0 or v (`Diffusion.prediction`) at a timestep t drawn uniformly
  or by importance (`timestep_sampler`), minimising `loss` ("simple", "vlb" or "hybrid", with
  `vlb_weight` for the hybrid), its L_simple term weighted by min-SNR-γ if `snr_gamma` > 0
  (Hang et al. 2023; 5 in the paper); a class-conditional network sees the null class with
  probability `label_dropout`. Every draw of example i comes from its own key."""
  name = "ddpm"

  def __init__(self, diffusion, loss: str = "simple", vlb_weight: float = 0.001,
               timestep_sampler: str = "uniform", label_dropout: float = 0.0,
               snr_gamma: float = 0.0):
    super().__init__(diffusion)
    _checks.choice(loss, LOSSES, "config.diffusion.loss")
    _checks.choice(timestep_sampler, ("uniform", "importance"),
                   "config.diffusion.timestep_sampler")
    if loss == "hybrid" and not diffusion.learned_variance:
      raise ValueError("config.diffusion.loss='hybrid' trains the variance: config.diffusion."
                       f"variance must be learned_range or learned, not {diffusion.variance!r}")
    if snr_gamma and loss == "vlb":
      raise ValueError("config.diffusion.snr_gamma weighs L_simple's term: it needs "
                       "config.diffusion.loss 'simple' or 'hybrid', not 'vlb'")
    self.loss, self.vlb_weight, self.timestep_sampler = loss, vlb_weight, timestep_sampler
    self.label_dropout, self.snr_gamma = label_dropout, snr_gamma

  @classmethod
  def from_config(cls, config, diffusion):
    d = config.diffusion
    return cls(diffusion, d.get("loss", "simple"), d.get("vlb_weight", 0.001),
               d.get("timestep_sampler", "uniform"), config.train.get("label_dropout", 0.0),
               d.get("snr_gamma", 0.0) or 0.0)

  @property
  def importance(self) -> bool:
    return self.timestep_sampler == "importance"

  def labels(self, keys, labels, num_classes):
    if not num_classes:
      return labels
    drop = jax.vmap(lambda k: jax.random.bernoulli(_keys(k)[3], self.label_dropout))(keys)
    return jnp.where(drop, num_classes, labels)

  def losses(self, step):
    d = self.diffusion
    schedule = d.schedule
    probs = timestep_probs(step.state)

    def draws(key):
      key_t, key_loss, _, _ = _keys(key)
      t = (jax.random.choice(key_t, schedule.num_steps, (1,), p=probs) if self.importance
           else jax.random.randint(key_t, (1,), 0, schedule.num_steps))
      noise = d.spec.project(
          jax.random.normal(jax.random.split(key_loss)[1], (1, *step.x0.shape[1:]))[0])
      return t[0], noise

    t, noise = jax.vmap(draws)(step.keys)
    out = training_losses(step.nets.student, schedule, step.x0, step.key, loss=self.loss,
                          prediction=d.prediction, variance=d.variance, t=t, noise=noise,
                          vlb_weight=self.vlb_weight)
    if self.snr_gamma:  # min-SNR-γ on the L_simple term (the hybrid's vlb term unweighted)
      weight = min_snr_weight(schedule, out["t"], d.prediction, self.snr_gamma)
      vb = self.vlb_weight * schedule.num_steps * out["vb"] if "vb" in out else 0.0
      out = {**out, "loss": weight * out["mse"] + vb}
    if self.importance:  # the unbiased estimate of the uniform average; the history keeps L_t
      out = {**out, "loss": 1.0 / (schedule.num_steps * probs[out["t"]]) * out["loss"],
             "unweighted": out["loss"]}
    return out

  def record(self, state, losses):
    if not self.importance:
      return state.loss_history, state.loss_count
    return record_losses(state, losses["t"], losses["unweighted"])

  # The probability-flow ODE at fractional timesteps t ∈ [0, T − 1], for the ODE likelihood:
  # log ᾱ(t) interpolated linearly between the schedule's steps (the network takes float t).
  def ode_span(self):
    return 0.0, float(self.diffusion.num_steps - 1)

  def prior_scale(self, level):
    return 1.0  # x_{T−1} ≈ N(0, I): ᾱ_{T−1} is ~4e-5 for the linear schedule

  def log_alpha_bar(self, t):
    """(log ᾱ(t), d log ᾱ / dt) at float t [N] ∈ [0, T − 1], linear between the schedule's
    steps: the levels `field` evaluates the network at."""
    d = self.diffusion
    log_ab = jnp.asarray(d.schedule.log_alphas_cumprod, jnp.float32)
    last = d.num_steps - 1
    k = jnp.clip(jnp.floor(t), 0, max(last - 1, 0)).astype(jnp.int32)
    slope = log_ab[jnp.minimum(k + 1, last)] - log_ab[k]  # on the segment
    return log_ab[k] + jnp.clip(t - k, 0.0, 1.0) * slope, slope

  def field(self, network):
    """dx/dt = α' x̂_0 + σ' ε̂ for x_t = α x_0 + σ ε, α = sqrt(ᾱ(t)), σ = sqrt(1 − ᾱ(t)),
    with x̂_0 from the network's prediction at float t (`diffusion.prediction`)."""
    d = self.diffusion
    c = d.spec.shape[-1]

    def f(x, t):
      log, slope = self.log_alpha_bar(t)
      col = lambda a: a.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
      alpha, sigma = col(jnp.exp(0.5 * log)), col(jnp.sqrt(-jnp.expm1(log)))
      out = network(x, t)[..., :c].astype(x.dtype)
      if d.prediction == "eps":
        x0 = (x - sigma * out) / alpha
      elif d.prediction == "v":
        x0 = alpha * x - sigma * out
      else:
        x0 = out
      eps = (x - alpha * x0) / sigma
      g = col(slope)
      return 0.5 * g * alpha * x0 - 0.5 * g * alpha ** 2 / sigma * eps
    return f
