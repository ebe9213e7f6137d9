"""DDPM on LSUN church_outdoor 256×256: the paper's settings (Ho et al. 2020, App. B).

The CelebA-HQ network and optimiser (celebahq256.py), trained 1.2M steps with
random flips. The paper reports FID 7.89 (Table 3).

  ddpm train --config experiments/configs/church256.py --workdir runs/church256 \\
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.model.dtype=bfloat16

needs lsun/church_outdoor prepared by TFDS as ArrayRecord; its images are
resized (shorter side) and center-cropped to 256×256 as they are read.
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "celebahq256.py"))
  config.data.name = "lsun/church_outdoor"
  config.train.num_steps = 1_200_000
  return config
