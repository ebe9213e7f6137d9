"""Improved consistency training on CIFAR-10 from data alone (Song & Dhariwal 2023), for a pod.

  ddpm train --config experiments/configs/cifar10_ict.py --workdir runs/cifar10_ict
  ddpm sample --workdir runs/cifar10_ict --steps 2 --num 50000 --out ict2.npz

cifar10_ct.py with the paper's improved recipe (digits_ict.py's): no EMA target (μ0 = 0),
pseudo-Huber distance (c = 0.00054 sqrt(3072) = 0.03), lognormal noise levels
(P_mean = -1.1, P_std = 2), weights 1 / (σ_{n+1} - σ_n), N doubling from s0 = 10,
dropout 0.3, lr 1e-4 (the paper: RAdam; here Adam), batch 1,024, 400k updates,
EMA 0.99993 for sampling. The paper's s1 = 1,280 exceeds the points a T = 1,000
DDPM's σ's give below σ = 80 (930): s1 = 640 here (7 stages instead of 8). The
target network runs with the student's dropout mask, as in the paper's code.
"""

import os

from diffusion.config import load_config


def get_config():
  here = os.path.dirname(__file__)
  config = load_config(os.path.join(here, "cifar10_ct.py"))
  config.distill.update(load_config(os.path.join(here, "digits_ict.py")).distill.to_dict())
  config.distill.s1 = 640
  config.model.dropout = 0.3
  config.optim.lr = 1e-4
  config.train.update(batch_size=1024, num_steps=400_000, ema_decay=0.99993)
  return config
