"""EDM's training (Karras et al. 2022, Table 1, config F) as a method (the math:
`diffusion/edm.py`).

The network F_θ is preconditioned into a denoiser D(x; σ) = c_skip x + c_out F_θ(c_in x,
c_noise) with c_noise = ln σ / 4, trained at ln σ ~ N(P_mean, P_std²) with the weight λ(σ) that
gives F's own target unit weight, on data of std σ_data in the model's units (VE: x = x_0 + σ n).
It samples with Heun (default, 18 steps: 35 evaluations) or Euler on dx/dσ = (x − D(x; σ)) / σ
over EDM's ρ grid from σ_max to σ_min, then 0: continuous σ, not rounded to a DDPM's σ_t.
Settings: `config.edm` (sigma_data, p_mean, p_std, sigma_min, sigma_max, rho).
"""

import jax
import numpy as np

from diffusion import _checks, edm
from diffusion.methods.base import Method, register
from diffusion.methods.flow import _label_dropout, continuous_steps


SPACINGS = ("karras", "logsnr")  # the grids of σ an EDM run samples on


@register
class EDM(Method):
  name = "edm"
  continuous = True
  default_sampler = "heun"

  def __init__(self, diffusion, sigma_data: float = edm.SIGMA_DATA, p_mean: float = edm.P_MEAN,
               p_std: float = edm.P_STD, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0, label_dropout: float = 0.0):
    super().__init__(diffusion)
    for key, value in (("sigma_data", sigma_data), ("p_std", p_std), ("sigma_min", sigma_min),
                       ("rho", rho)):
      _checks.positive(value, f"config.edm.{key}")
    if not sigma_max > sigma_min:
      raise ValueError(f"config.edm.sigma_max must exceed config.edm.sigma_min ({sigma_min}); "
                       f"got {sigma_max!r}")
    self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
    self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
    self.label_dropout = label_dropout

  @classmethod
  def from_config(cls, config, diffusion):
    e = config.get("edm") or {}
    return cls(diffusion, e.get("sigma_data", edm.SIGMA_DATA), e.get("p_mean", edm.P_MEAN),
               e.get("p_std", edm.P_STD), e.get("sigma_min", 0.002), e.get("sigma_max", 80.0),
               e.get("rho", 7.0), config.train.get("label_dropout", 0.0))

  def conditioning(self, level):
    return edm.preconditioning(level, self.sigma_data)[3]

  def noise_sigma(self, conditioning):
    return jax.numpy.exp(4 * conditioning)  # c_noise = ln σ / 4

  def labels(self, keys, labels, num_classes):
    return _label_dropout(keys, labels, num_classes, self.label_dropout)

  def denoiser(self, network):
    c = self.diffusion.spec.shape[-1]
    return edm.preconditioned(lambda x_in, c_noise: network(x_in, c_noise)[..., :c],
                              self.sigma_data)

  def losses(self, step):
    x0 = step.x0

    def draws(key):
      key_sigma, key_noise = jax.random.split(key)[:2]
      return (edm.sample_sigmas(key_sigma, (), self.p_mean, self.p_std),
              self.diffusion.spec.project(jax.random.normal(key_noise, x0.shape[1:])))

    sigma, noise = jax.vmap(draws)(step.keys)
    loss = edm.training_loss(self.denoiser(step.nets.student), x0, noise, sigma,
                             self.sigma_data)
    return {"loss": loss, "mse": loss / edm.loss_weight(sigma, self.sigma_data)}

  def field(self, network):
    return edm.ode_field(self.denoiser(network))

  def prior_scale(self, level):
    return float(level)

  def ode_span(self):  # the prior N(0, σ_max²) neglects the data's variance (σ_data² ≪ σ_max²)
    return self.sigma_min, self.sigma_max

  def path(self, level):
    return 1.0, float(level)

  def level_of(self, ratio):
    return float(ratio)

  def sampling_steps(self, sampler, steps, spacing_name, start, sigmas=None):
    """`steps` levels of σ from σ_max to σ_min, then 0: EDM's ρ grid ("karras", the default)
    or uniform in log σ ("logsnr": uniform in λ = −log σ, DPM-Solver's choice and dpm++'s
    default)."""
    count = continuous_steps(self, sampler, steps, None, start, sigmas)
    name = spacing_name or (sampler.default_spacing if sampler.default_spacing in SPACINGS
                            else "karras")
    if name not in SPACINGS:
      raise ValueError(f"`spacing` of an EDM run's chain must be one of {', '.join(SPACINGS)} "
                       f"(EDM's ρ grid, or uniform in log σ); got {name!r}")
    if name == "logsnr":
      grid = np.exp(np.linspace(np.log(self.sigma_max), np.log(self.sigma_min), count))
    else:
      grid = edm.karras_sigmas(count, self.sigma_min, self.sigma_max, self.rho)
    return np.append(grid, 0.0)


