"""EDM's training (Karras et al. 2022, Table 1, config F; hyperparameters of its Table 7 for
CIFAR-10) on `cifar10.py`'s network, Ho et al.'s 35.7M-parameter U-Net, in place of EDM's
DDPM++/NCSN++.

EDM's parts: the preconditioning D(x; σ) = c_skip x + c_out F(c_in x, ln σ / 4) with σ_data =
0.5, ln σ ~ N(−1.2, 1.2²), the weight λ(σ) = (σ² + σ_data²) / (σ σ_data)², Adam at lr 1e-3
ramped up over 10 Mimg (19,531 steps of 512), batch 512, 200 Mimg (390,625 steps), EMA of
half-life 0.5 Mimg (a decay of 0.5^(512/500,000) = 0.99929 a step), dropout 0.13; sampling
with Heun over the ρ = 7 grid from σ = 80 to 0.002, 18 steps (35 evaluations; EDM's FID 1.97
unconditional with its own network). Left out: EDM's non-leaky augmentation pipeline (p =
0.12), which this library does not have: expect a worse FID than the paper's, from the
network and the missing augmentation.

  ddpm train --config experiments/configs/cifar10_edm.py --workdir runs/cifar10_edm \
      --config.data.data_dir=/path/to/tensorflow_datasets
  ddpm sample --workdir runs/cifar10_edm --num 50000 --out edm.npz

On TPU or GPU add --config.model.dtype=bfloat16. Its `diffusion` section is read for clip_x0
only.
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "cifar10.py"))
  config.method = "edm"
  config.edm = {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002,
                "sigma_max": 80.0, "rho": 7.0}
  config.model.dropout = 0.13
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 19_531
  config.optim.grad_clip = 0.0
  config.train.batch_size = 512
  config.train.num_steps = 390_625
  config.train.ema_decay = 0.99929
  config.train.sample_every = 25_000
  config.train.sample_sampler = ""  # the method's own: heun
  config.train.sample_steps = 0  # its default, 18
  return config
