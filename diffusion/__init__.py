"""Denoising diffusion probabilistic models in JAX: the math as pure functions.

Equation numbers refer to Ho, Jain & Abbeel 2020 (DDPM) unless a docstring
names another paper: Song, Meng & Ermon 2020 (DDIM) or Nichol & Dhariwal 2021
(improved DDPM).
"""

from diffusion.forward import q_mean_variance, q_posterior, q_sample
from diffusion.likelihood import (
    BitsPerDim, bits_per_dim, discretized_gaussian_log_likelihood, normal_kl,
    prior_bpd, vlb_term)
from diffusion.losses import loss_hybrid, loss_simple, loss_vlb, training_losses
from diffusion.parameterization import (
    eps_from_v, eps_from_x0, target, v_from_x0_eps, x0_from_eps,
    x0_from_prediction, x0_from_v)
from diffusion.reverse import (
    ddim_inverse_step, ddim_step, p_mean_variance, p_sample)
from diffusion.schedules import (
    BETA_SCHEDULES, Schedule, cosine_betas, linear_betas, make_schedule,
    quadratic_betas, respace_betas, sigmoid_betas)

__version__ = "0.1.0"

__all__ = [
    "BETA_SCHEDULES",
    "BitsPerDim",
    "Schedule",
    "bits_per_dim",
    "cosine_betas",
    "ddim_inverse_step",
    "ddim_step",
    "discretized_gaussian_log_likelihood",
    "eps_from_v",
    "eps_from_x0",
    "linear_betas",
    "loss_hybrid",
    "loss_simple",
    "loss_vlb",
    "make_schedule",
    "normal_kl",
    "p_mean_variance",
    "p_sample",
    "prior_bpd",
    "q_mean_variance",
    "q_posterior",
    "q_sample",
    "quadratic_betas",
    "respace_betas",
    "sigmoid_betas",
    "target",
    "training_losses",
    "v_from_x0_eps",
    "vlb_term",
    "x0_from_eps",
    "x0_from_prediction",
    "x0_from_v",
]
