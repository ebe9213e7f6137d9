"""Progressive distillation (Salimans & Ho 2022) on the timesteps of a discrete-time DDPM.

A teacher sampled by a K0-step DDIM chain is distilled into a student that
takes K0/2 steps, which then teaches one of K0/4, and so on down to K. Every
chain of the process visits steps of one base grid G of K0 timesteps, G_j =
round((j + 1) T / K0) - 1 (j < K0; G_{K0-1} = T - 1): the K-step chain visits
G_{(j+1) K0/K - 1} for j = K - 1, ..., 0 and then goes to the data (t = -1,
ᾱ = 1), so each student step spans exactly two steps of its teacher.

The student predicts v (x̂_0 = sqrt(ᾱ_t) z_t - sqrt(1 - ᾱ_t) v; Salimans & Ho
Sec. 4: an ε-student cannot predict x_0 at the pure-noise end, where a
one-step student must). Shapes: z, x0 [B, ..., C]; t int [B].
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.reverse import ddim_step
from diffusion.schedules import Schedule


def rounds(teacher_steps: int, steps: int) -> int:
  """m with steps · 2^m = teacher_steps, m >= 1: the halvings from the teacher's chain to the
  student's; a ValueError names --steps or --teacher-steps otherwise."""
  for name, value in (("`teacher_steps`", teacher_steps), ("`steps`", steps)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive int; got {value!r}")
  m = 0
  while steps << (m + 1) <= teacher_steps:
    m += 1
  if m == 0 or steps << m != teacher_steps:
    reachable = sorted({teacher_steps >> i for i in range(1, 64)
                        if (teacher_steps >> i) << i == teacher_steps} - {0})
    raise ValueError(f"`steps` {steps} cannot be reached by halving `teacher_steps` "
                     f"{teacher_steps}: choose one of {reachable}")
  return m


def base_grid(num_steps: int, teacher_steps: int) -> np.ndarray:
  """G: the teacher chain's K0 timesteps, int [K0] increasing, G_j = round((j+1) T/K0) - 1."""
  if not 1 <= teacher_steps <= num_steps:
    raise ValueError(f"`teacher_steps` must lie in [1, {num_steps}] (the model's T); got "
                     f"{teacher_steps}")
  return np.round(np.arange(1, teacher_steps + 1) * num_steps / teacher_steps).astype(int) - 1


def student_steps(num_steps: int, teacher_steps: int, steps: int) -> np.ndarray:
  """The K timesteps a K-step chain visits, decreasing (the last step goes on to t = -1)."""
  grid = base_grid(num_steps, teacher_steps)
  return grid[teacher_steps // steps - 1::teacher_steps // steps][::-1].copy()


def round_timesteps(grid: jax.Array, stride: jax.Array, i: jax.Array):
  """(t, t_mid, t_next) of student step i in [1, K_r] when each teacher step spans `stride`
  steps of the base grid: t = G_{2 i s - 1}, t_mid = G_{(2i-1) s - 1}, t_next = G_{(2i-2) s - 1}
  or -1 (the data) for i = 1. All int [B]."""
  t = grid[2 * i * stride - 1]
  t_mid = grid[(2 * i - 1) * stride - 1]
  t_next = jnp.where(i > 1, grid[jnp.maximum((2 * i - 2) * stride - 1, 0)], -1)
  return t, t_mid, t_next


def ddim_x0_step(schedule: Schedule, x0: jax.Array, z: jax.Array, t: jax.Array,
                 t_next: jax.Array, clip_x0: bool) -> jax.Array:
  """DDIM's deterministic step (eq. 12, η = 0) from z_t to z_{t_next} given x̂_0."""
  return ddim_step(schedule, x0, z, t, t_next, None, prediction="x0", clip_x0=clip_x0)[0]


def target(schedule: Schedule, teacher_x0, z: jax.Array, t: jax.Array, t_mid: jax.Array,
           t_next: jax.Array, *, clip_x0: bool = False) -> jax.Array:
  """x̃ of Salimans & Ho's Algorithm 2: the x̂_0 with which one DDIM step from z_t lands where
  two teacher DDIM steps (t -> t_mid -> t_next) do:

    z'' = DDIM(DDIM(z_t)),   x̃ = (z'' - (σ''/σ_t) z_t) / (α'' - (σ''/σ_t) α_t),

  with α = sqrt(ᾱ), σ = sqrt(1 - ᾱ) (x̃ = z'' when t_next = -1, the data).
  `teacher_x0(z, t)` is the teacher's (clipped, with `clip_x0`) x̂_0.
  """
  z_mid = ddim_x0_step(schedule, teacher_x0(z, t), z, t, t_mid, clip_x0)
  z_next = ddim_x0_step(schedule, teacher_x0(z_mid, t_mid), z_mid, t_mid, t_next, clip_x0)
  shape = (-1,) + (1,) * (z.ndim - 1)
  at = lambda table, s: table[jnp.maximum(s, 0)].reshape(shape)
  data = (t_next < 0).reshape(shape)
  alpha_next = jnp.where(data, 1.0, at(schedule.sqrt_alphas_cumprod, t_next))
  ratio = jnp.where(data, 0.0, at(schedule.sqrt_one_minus_alphas_cumprod, t_next)
                    / at(schedule.sqrt_one_minus_alphas_cumprod, t))
  return ((z_next - ratio * z) / (alpha_next - ratio * at(schedule.sqrt_alphas_cumprod, t))
          ).astype(z.dtype)


def snr_weight(schedule: Schedule, t: jax.Array) -> jax.Array:
  """Salimans & Ho's "truncated SNR" weighting of the x̂_0 error: max(ᾱ_t / (1 - ᾱ_t), 1), [B]."""
  return jnp.maximum(jnp.exp(schedule.log_alphas_cumprod[t]
                             - schedule.log_one_minus_alphas_cumprod[t]), 1.0)
