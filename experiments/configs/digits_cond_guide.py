"""The autoguidance guide of `digits_cond.py` (Karras et al. 2024): the same network and data
trained for a quarter of the steps (550 of 2,200, the learning rate's decay shortened to
match): a weaker version of the main model, whose errors guidance pushes away from.

  ddpm train --config experiments/configs/digits_cond_guide.py --workdir runs/digits_cond_guide
  ddpm sample --workdir runs/digits_cond --num 1000 --out ag.npz --sampler dpm++ --steps 20 \
      --guidance 1.5 --guide-workdir runs/digits_cond_guide
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "digits_cond.py"))
  config.train.num_steps = 550
  config.optim.decay_steps = 550
  config.train.sample_every = 550
  config.train.checkpoint_every = 550
  config.train.ema_snapshot_every = 110
  return config
