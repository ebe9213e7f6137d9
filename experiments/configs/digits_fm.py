"""Flow matching (rectified flow) on the digits: the default's network, data and budget.

The network predicts the velocity ε − x_0 of x_t = (1 − t) x_0 + t ε, t logit-normal (SD3's
m = 0, s = 1), and samples with Euler over 50 steps of t (or `--sampler heun`, 2N − 1
evaluations) from x_1 ~ N(0, I):

  ddpm train --config experiments/configs/digits_fm.py --workdir runs/digits_fm
  ddpm sample --workdir runs/digits_fm --num 1000 --out fm.npz --steps 8
  ddpm evaluate --samples fm.npz --digits

Everything else is digits.py's (network, 2,200 steps of batch 64, lr and EMA); its
`diffusion` section is read for clip_x0 only (the schedule is the discrete DDPM's).
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.method = "flow"
  config.flow = {"times": "logit_normal", "m": 0.0, "s": 1.0, "shift": 1.0}
  config.train.sample_sampler = ""  # the method's own: euler
  config.train.sample_steps = 0  # its default, 50
  return config
