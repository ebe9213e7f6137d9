"""Progressive distillation of the CIFAR-10 run (Salimans & Ho 2022's settings), for a pod.

  ddpm distill --config experiments/configs/distill_cifar10.py --workdir runs/cifar10 \
      --out runs/cifar10_pd --method progressive --steps 1
  ddpm sample --workdir runs/cifar10_pd --steps 4 --num 50000 --out pd4.npz

The paper's CIFAR-10 settings: batch 128, Adam at lr 5e-5 annealed to 0 over
each round (here a cosine, not linear), no EMA, gradient clipping at 1, no
dropout in the student, 50,000 updates per halving, the truncated-SNR weighting.
Its teacher chain had 8,192 steps of a continuous-time model; a T = 1000 DDPM
offers at most 1,000, so this starts at 512 (9 halvings to 1 step). Every
round's student is kept (`ddpm sample --steps K` picks it).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.distill = ml_collections.ConfigDict()
  config.distill.method = "progressive"
  config.distill.teacher_steps = 512
  config.distill.steps = 1
  config.distill.round_steps = 50_000

  config.model = ml_collections.ConfigDict()
  config.model.dropout = 0.0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 5e-5
  config.optim.warmup_steps = 0
  config.optim.decay_steps = 50_000  # set by ddpm distill: each round anneals to 0
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 450_000  # set by ddpm distill: rounds x round_steps
  config.train.batch_size = 128
  config.train.label_dropout = 0.0
  config.train.ema_decay = 0.0  # the paper's: no EMA
  config.train.ema_warmup = False
  config.train.steps_per_dispatch = 1
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.keep_checkpoints = 2  # progressive: ddpm distill keeps every round's
  config.train.sample_every = 10_000
  config.train.num_samples = 64
  config.train.sample_sampler = ""
  config.train.sample_steps = 0
  return config
