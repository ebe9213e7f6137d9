"""Few-step students of the digits run (CPU, minutes): `ddpm distill` settings.

  ddpm train --config experiments/configs/digits.py --workdir runs/digits
  ddpm distill --config experiments/configs/distill_digits.py --workdir runs/digits \
      --out runs/digits_pd1 --method progressive --steps 1
  ddpm distill --config experiments/configs/distill_digits.py --workdir runs/digits \
      --out runs/digits_cd --method consistency
  ddpm sample --workdir runs/digits_pd1 --num 1000 --out pd1.npz

Only the `optim`, `train` and `distill` sections are read; the data, network and
diffusion are the teacher's. Progressive distillation halves a 64-step DDIM
teacher six times (64 -> 32 -> ... -> 1), `round_steps` updates per halving;
consistency distillation follows Song et al. 2023's CIFAR-10 settings (N = 18,
μ = 0.95, Heun teacher steps) with the squared L2 distance (LPIPS needs
downloaded weights).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.distill = ml_collections.ConfigDict()
  config.distill.method = "progressive"  # --method: progressive or consistency
  # Progressive distillation (Salimans & Ho 2022).
  config.distill.teacher_steps = 64  # the teacher's DDIM chain, K0 (--teacher-steps)
  config.distill.steps = 1  # the student's, K0 / 2^m (--steps)
  config.distill.round_steps = 500  # updates per halving
  # Consistency distillation (Song et al. 2023).
  config.distill.num_points = 18  # N: the σ grid of the teacher's Heun steps
  config.distill.target_decay = 0.95  # μ of the target network θ⁻
  config.distill.sigma_data = 0.5
  config.distill.metric = "l2"  # or "pseudo_huber"

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 5e-4
  config.optim.warmup_steps = 0
  config.optim.decay_steps = 3000  # consistency: cosine to 0 (progressive: in every round)
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 3000  # consistency distillation (progressive: rounds x round_steps)
  config.train.batch_size = 64
  config.train.label_dropout = 0.0
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True
  config.train.steps_per_dispatch = 1
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.sample_every = 1000
  config.train.num_samples = 64
  config.train.sample_sampler = ""  # "": the student's own chain
  config.train.sample_steps = 0  # 0: the student's default
  return config
