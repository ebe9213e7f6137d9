"""Consistency distillation of the digits run (CPU, minutes): `ddpm distill` settings.

  ddpm train --config experiments/configs/digits.py --workdir runs/digits
  ddpm distill --config experiments/configs/consistency_digits.py --workdir runs/digits \
      --out runs/digits_cd --method consistency
  ddpm sample --workdir runs/digits_cd --steps 1 --num 1000 --out cd1.npz

Only the `optim`, `train` and `distill` sections are read; the data, network and
diffusion are the teacher's. Song et al. 2023's discretisation (N = 18 points
of EDM's ρ = 7 spacing, the teacher's Heun step between neighbours,
σ_data = 0.5) with the squared L2 distance (LPIPS needs downloaded weights)
and, as improved consistency training found better, the target network equal
to the student (μ = 0); 6,000 updates at lr 2e-3 decayed to 0, EMA 0.999.
About 15 minutes on 2 cores (26 CPU-minutes). Samples in 1 to 17 steps (`--steps`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.distill = ml_collections.ConfigDict()
  config.distill.method = "consistency"  # as --method
  config.distill.num_points = 18  # N: the σ grid of the teacher's Heun steps
  config.distill.target_decay = 0.0  # μ of the target network θ⁻ (the paper's CIFAR-10: 0.95)
  config.distill.sigma_data = 0.5
  config.distill.metric = "l2"  # or "pseudo_huber"

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.optim.decay_steps = 6000  # cosine to 0 at the last step
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 6000
  config.train.batch_size = 64
  config.train.label_dropout = 0.0
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True
  config.train.steps_per_dispatch = 1
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 2
  config.train.sample_every = 3000
  config.train.num_samples = 64
  config.train.sample_sampler = ""  # "": the student's own chain
  config.train.sample_steps = 0  # 0: the student's default (1 step)
  return config
