"""DDPM on CelebA-HQ 256×256, unconditional: the paper's settings (Ho et al. 2020, App. B).

113,673,219 parameters: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 ResNet blocks
per resolution, self-attention at 16×16, no dropout; the network of the LSUN
models too (church256.py, bedroom256.py derive from this file). Adam lr 2e-5,
batch 64, EMA 0.9999, random flips, 0.5M steps. The paper shows samples
(Fig. 1, 14) and reports no FID for CelebA-HQ.

  ddpm train --config experiments/configs/celebahq256.py --workdir runs/celebahq256 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.model.dtype=bfloat16

needs celeb_a_hq/256 prepared by TFDS as ArrayRecord (it needs a manual
download). The released checkpoint loads with `ddpm convert
DIFFUSERS_DIR OUT_DIR` (diffusers folder google/ddpm-celebahq-256).
"""

import os

from diffusion.config import load_config


def get_config():
  """cifar10.py with the 256×256 network, data and optimiser."""
  config = load_config(os.path.join(os.path.dirname(__file__), "cifar10.py"))
  config.data.name = "celeb_a_hq/256"
  config.data.image_size = 256
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.dropout = 0.0
  config.optim.lr = 2e-5
  config.train.batch_size = 64
  config.train.num_steps = 500_000
  return config
