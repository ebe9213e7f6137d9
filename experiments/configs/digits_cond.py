"""Class-conditional DDPM on the digits, with label dropout for classifier-free guidance: the
default's network, data and budget, the labels given to the U-Net's class embedding and
replaced by the null class for 10 % of the examples (Ho & Salimans 2022).

  ddpm train --config experiments/configs/digits_cond.py --workdir runs/digits_cond
  ddpm sample --workdir runs/digits_cond --num 1000 --out cfg.npz --sampler dpm++ --steps 20 \
      --guidance 1.5                                     # classifier-free guidance
  ddpm sample --workdir runs/digits_cond --num 1000 --out icfg.npz --sampler dpm++ --steps 20 \
      --guidance 2 --guidance-interval 0.3,5             # limited to σ in [0.3, 5]
  ddpm train --config experiments/configs/digits_cond_guide.py --workdir runs/digits_cond_guide
  ddpm sample --workdir runs/digits_cond --num 1000 --out ag.npz --sampler dpm++ --steps 20 \
      --guidance 1.5 --guide-workdir runs/digits_cond_guide   # autoguidance
  ddpm evaluate --samples cfg.npz --digits
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.model.num_classes = 10
  config.train.label_dropout = 0.1
  return config
