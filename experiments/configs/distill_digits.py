"""Progressive distillation of the digits run (CPU, minutes): `ddpm distill` settings.

  ddpm train --config experiments/configs/digits.py --workdir runs/digits
  ddpm distill --config experiments/configs/distill_digits.py --workdir runs/digits \
      --out runs/digits_pd --method progressive --steps 1
  ddpm sample --workdir runs/digits_pd --steps 4 --num 1000 --out pd4.npz

Only the `optim`, `train` and `distill` sections are read; the data, network and
diffusion are the teacher's. A 64-step DDIM teacher is halved six times (64 ->
32 -> ... -> 1), 1,000 updates per halving at lr 1e-3 annealed to 0 in each
round, EMA 0.999 (restarted each round); every round's student is kept, so
`--steps 8`, `4`, `2` and `1` all sample. About 23 CPU-minutes on 2 cores.
(Consistency distillation: consistency_digits.py.)
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.distill = ml_collections.ConfigDict()
  config.distill.method = "progressive"  # as --method
  config.distill.teacher_steps = 64  # the teacher's DDIM chain, K0 (--teacher-steps)
  config.distill.steps = 1  # the student's, K0 / 2^m (--steps)
  config.distill.round_steps = 1000  # updates per halving

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 0
  config.optim.decay_steps = 1000  # set by ddpm distill: each round anneals to 0
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 6000  # set by ddpm distill: rounds x round_steps
  config.train.batch_size = 64
  config.train.label_dropout = 0.0
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True
  config.train.steps_per_dispatch = 1
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 2  # ddpm distill keeps every round's
  config.train.sample_every = 1000
  config.train.num_samples = 64
  config.train.sample_sampler = ""  # "": the student's own chain
  config.train.sample_steps = 0  # 0: the student's default
  return config
