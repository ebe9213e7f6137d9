"""Consistency training on CIFAR-10 from data alone (Song et al. 2023, Algorithm 3), for a pod.

  ddpm train --config experiments/configs/cifar10_ct.py --workdir runs/cifar10_ct
  ddpm sample --workdir runs/cifar10_ct --steps 2 --num 50000 --out ct2.npz

The network and data of cifar10.py; the paper's CT settings: N(k) growing from
s0 = 2 to s1 + 1 = 151 points, target decay μ(k) = exp(s0 log μ0 / N(k)) with
μ0 = 0.9, σ_data = 0.5, Adam at lr 4e-4, batch 512, 800k updates, EMA 0.9999;
squared L2 or pseudo-Huber distance (LPIPS needs downloaded weights).
"""

import os

import ml_collections

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "cifar10.py"))
  config.distill = ml_collections.ConfigDict(dict(
      method="consistency_training", s0=2, s1=150, mu0=0.9, sigma_data=0.5, metric="l2"))
  config.optim.update(lr=4e-4, warmup_steps=0, decay_steps=0, grad_clip=0.0)
  config.train.update(batch_size=512, ema_decay=0.9999, sample_sampler="consistency",
                      sample_steps=1)
  return config
