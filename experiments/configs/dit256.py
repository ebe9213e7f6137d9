"""A Diffusion Transformer of DiT-B's size on CelebA-HQ 256×256, in pixel space.

DiT-B (Peebles & Xie 2023): hidden 768, depth 12, 12 heads. The paper's B/2 runs on
32×32×4 latents (256 tokens); in pixels, 8×8 patches give 1,024 tokens of 192 values.
The data, schedule and recipe are celebahq256.py's (batch 64, 0.5M steps, bfloat16
compute). Planned for TPU topologies in docs/benchmarks.md:

  ddpm plan --config experiments/configs/dit256.py --topology v5p:2x2x1
  ddpm train --config experiments/configs/dit256.py --workdir runs/dit256 \\
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
"""

import os

import ml_collections

from diffusion.config import load_config


def get_config() -> ml_collections.ConfigDict:
  config = load_config(os.path.join(os.path.dirname(__file__), "celebahq256.py"))
  config.model = ml_collections.ConfigDict()
  config.model.name = "dit"
  config.model.patch_size = 8
  config.model.hidden_size = 768
  config.model.depth = 12
  config.model.num_heads = 12
  config.model.num_classes = 0
  config.model.dtype = "bfloat16"
  config.optim.lr = 1e-4  # DiT's AdamW rate (constant); the schedule's warm-up is celebahq256's
  return config
