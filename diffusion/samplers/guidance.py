"""Guidance as functions of the network a chain calls, `(x, t) -> output`: classifier-free
guidance (Ho & Salimans 2022), the same limited to an interval of noise levels (Kynkäänniemi
et al. 2024), and autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad
version of itself"). Each mixes the mean channels of two predictions (ε, x₀, v, a velocity or
EDM's F: linear in the denoiser, so mixing them mixes denoisers) and keeps the main model's
learned variance, if any.

An interval is a predicate of the conditioning the chain passes (`interval`): outside it the
network is the main model alone, through `lax.cond`, so only that model is evaluated there.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion.samplers.base import NetworkFn


def _mix(main, other, scale, channels):
  """other + w (main − other) on the first `channels` channels; main's beyond them."""
  mean = other[..., :channels] + scale * (main[..., :channels] - other[..., :channels])
  return jnp.concatenate([mean, main[..., channels:]], axis=-1)


def _within(active, guided: NetworkFn, plain: NetworkFn) -> NetworkFn:
  if active is None:
    return guided
  return lambda x, t: jax.lax.cond(active(t), guided, plain, x, t)


def classifier_free_guidance(model_fn: Callable[..., jax.Array], labels: jax.Array,
                             null_class: int, scale: float, channels: int,
                             active: Callable[[jax.Array], jax.Array] | None = None
                             ) -> NetworkFn:
  """ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)) on the mean channels, where `active(t)` holds (default:
  everywhere), else ε(x, y) alone. `model_fn(x, t, y)` is the class-conditional network; both
  terms come from one call on the doubled batch."""
  def guided(x, t):
    n = x.shape[0]
    both = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, jnp.full((n,), null_class, labels.dtype)]))
    return _mix(both[:n], both[n:], scale, channels)
  return _within(active, guided, lambda x, t: model_fn(x, t, labels))


def autoguidance(main_fn: NetworkFn, guide_fn: NetworkFn, scale: float, channels: int,
                 active: Callable[[jax.Array], jax.Array] | None = None) -> NetworkFn:
  """D̃ = D_guide + w (D_main − D_guide) on the mean channels, where `active(t)` holds (default:
  everywhere), else D_main alone: the guide is a weaker model of the same data and
  conditioning (smaller, or trained for less), both called as `(x, t)`."""
  def guided(x, t):
    return _mix(main_fn(x, t), guide_fn(x, t), scale, channels)
  return _within(active, guided, main_fn)


def interval(sigma_of: Callable[[jax.Array], jax.Array], low: float, high: float
             ) -> Callable[[jax.Array], jax.Array]:
  """The predicate "σ of the chain's current level lies in [low, high]" of the conditioning t
  [N] a chain passes (one level for all samples), with `sigma_of` mapping it to EDM's σ (the
  noise-to-signal ratio σ_t / α_t: `Method.noise_sigma`)."""
  if not 0 <= low < high:
    raise ValueError(f"`guidance_interval` must be (low, high) with 0 <= low < high (EDM's σ); "
                     f"got ({low!r}, {high!r})")
  def active(t):
    sigma = sigma_of(t)[0]
    return (sigma >= low) & (sigma <= high)
  return active
