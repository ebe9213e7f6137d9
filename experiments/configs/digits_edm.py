"""EDM's training (Karras et al. 2022, config F) on the digits: the default's network, data
and budget.

This U-Net is preconditioned into D(x; σ) = c_skip x + c_out F(c_in x, ln σ / 4) for data of
std σ_data = 0.5 (the digits in [-1, 1]), trained at ln σ ~ N(−1.2, 1.2²) with EDM's λ(σ), and
samples with Heun over EDM's ρ = 7 grid of continuous σ from 80 to 0.002 (18 steps: 35
evaluations; `--steps 4`: 7):

  ddpm train --config experiments/configs/digits_edm.py --workdir runs/digits_edm
  ddpm sample --workdir runs/digits_edm --num 1000 --out edm.npz --steps 4
  ddpm evaluate --samples edm.npz --digits

Everything else is digits.py's (network, 2,200 steps of batch 64, lr and EMA); its
`diffusion` section is read for clip_x0 only.
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.method = "edm"
  config.edm = {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002,
                "sigma_max": 80.0, "rho": 7.0}
  config.train.sample_sampler = ""  # the method's own: heun
  config.train.sample_steps = 0  # its default, 18
  return config
