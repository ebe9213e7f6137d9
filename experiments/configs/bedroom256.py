"""DDPM on LSUN bedroom 256×256: the paper's settings (Ho et al. 2020, App. B).

The CelebA-HQ network and optimiser (celebahq256.py), trained 2.4M steps
without random flips (the paper used none for bedrooms). The paper reports
FID 6.36 (Table 3; 4.90 with a larger network).

  ddpm train --config experiments/configs/bedroom256.py --workdir runs/bedroom256 \\
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.model.dtype=bfloat16

needs lsun/bedroom prepared by TFDS as ArrayRecord; its images are resized
(shorter side) and center-cropped to 256×256 as they are read.
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "celebahq256.py"))
  config.data.name = "lsun/bedroom"
  config.data.random_flip = False
  config.train.num_steps = 2_400_000
  return config
