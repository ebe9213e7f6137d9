"""Consistency training on the digits from data alone (Song et al. 2023, Algorithm 3): CPU, minutes.

  ddpm train --config experiments/configs/digits_ct.py --workdir runs/digits_ct
  ddpm sample --workdir runs/digits_ct --steps 2 --num 1000 --out ct2.npz

The network and data of digits.py; N(k) grows from s0 = 2 to s1 + 1 = 21
points and the target network's decay μ(k) with it (μ0 = 0.9), σ_data = 0.5,
squared L2 distance; grids with the one-step chain. 4,000 updates (13 CPU-minutes
on 2 cores) reach digits-FID 46.4 / 40.9 in 1 / 2 steps: far behind
distillation, which starts from a trained network. The paper's CIFAR-10 s1 = 150
grows N too fast for a run this short (digits-FID 556, noise).
"""

import os

import ml_collections

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.distill = ml_collections.ConfigDict(dict(
      method="consistency_training", s0=2, s1=20, mu0=0.9, sigma_data=0.5, metric="l2"))
  config.optim.update(lr=1e-3, warmup_steps=100, decay_steps=4000)
  config.train.update(num_steps=4000, sample_every=2000, sample_sampler="consistency",
                      sample_steps=1)
  return config
