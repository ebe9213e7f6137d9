"""Consistency distillation of the CIFAR-10 run (Song et al. 2023's settings), for a pod.

  ddpm distill --config experiments/configs/consistency_cifar10.py --workdir runs/cifar10 \
      --out runs/cifar10_cd --method consistency
  ddpm sample --workdir runs/cifar10_cd --steps 1 --num 50000 --out cd1.npz

The paper's CIFAR-10 consistency distillation: N = 18 points of EDM's ρ = 7
spacing, one Heun step of the teacher per pair, a target network with μ = 0.95,
σ_data = 0.5, Adam at lr 4e-4, batch 512, 800k updates, EMA 0.9999 for sampling.
The distance here is squared L2 (the paper's best, LPIPS, needs weights from the
web) or pseudo-Huber (improved consistency training); the σ's are the DDPM's own,
from σ_0 = 0.01 to 80.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.distill = ml_collections.ConfigDict()
  config.distill.method = "consistency"
  config.distill.num_points = 18
  config.distill.target_decay = 0.95
  config.distill.sigma_data = 0.5
  config.distill.metric = "l2"  # or "pseudo_huber"

  config.model = ml_collections.ConfigDict()
  config.model.dropout = 0.0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 4e-4
  config.optim.warmup_steps = 0
  config.optim.decay_steps = 0
  config.optim.grad_clip = 0.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 800_000
  config.train.batch_size = 512
  config.train.label_dropout = 0.0
  config.train.ema_decay = 0.9999
  config.train.ema_warmup = False
  config.train.steps_per_dispatch = 1
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.keep_checkpoints = 3
  config.train.sample_every = 10_000
  config.train.num_samples = 64
  config.train.sample_sampler = ""
  config.train.sample_steps = 0
  return config
