"""Flow matching (rectified flow) on CIFAR-10 32×32 at DDPM's budget: `cifar10.py`'s network
(Ho et al.'s 35.7M-parameter U-Net), data, optimizer, batch 128 and 800k steps, so that the
two objectives compare at equal training.

The network predicts the velocity ε − x_0 of x_t = (1 − t) x_0 + t ε, t logit-normal (SD3's
m = 0, s = 1; `--config.flow.times=uniform` for Lipman et al.'s and Liu et al.'s uniform t),
and samples over continuous t from x_1 ~ N(0, I) with Euler (its default, 50 steps), Heun or
DPM-Solver++(2M) (`--sampler dpm++`):

  ddpm train --config experiments/configs/cifar10_fm.py --workdir runs/cifar10_fm \
      --config.data.data_dir=/path/to/tensorflow_datasets
  ddpm sample --workdir runs/cifar10_fm --num 50000 --out fm.npz --sampler heun --steps 18

Not a paper's recipe: flow matching's papers trained other networks (Lipman et al. an ADM
U-Net, Liu et al. score_sde's DDPM++); this config isolates the objective. Its `diffusion`
section is read for clip_x0 only.
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "cifar10.py"))
  config.method = "flow"
  config.flow = {"times": "logit_normal", "m": 0.0, "s": 1.0, "shift": 1.0}
  config.train.sample_sampler = ""  # the method's own: euler
  config.train.sample_steps = 0  # its default, 50
  return config
