"""DDPM on CelebA-HQ 256×256, unconditional: the paper's settings (Ho et al. 2020, App. B).

113,673,219 parameters: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 ResNet blocks
per resolution, self-attention at 16×16, no dropout; the network of the LSUN
models too (church256.py, bedroom256.py derive from this file). Adam lr 2e-5,
batch 64, EMA 0.9999, random flips, 0.5M steps. The paper shows samples
(Fig. 1, 14) and reports no FID for CelebA-HQ.

  ddpm train --config experiments/configs/celebahq256.py --workdir runs/celebahq256 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.model.dtype=bfloat16

needs celeb_a_hq/256 prepared by TFDS as ArrayRecord (it needs a manual
download). The released checkpoint loads with `python -m diffusion.convert
DIFFUSERS_DIR OUT_DIR` (diffusers folder google/ddpm-celebahq-256).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "celeb_a_hq/256"
  config.data.image_size = 256
  config.data.split = "train"
  config.data.data_dir = ""  # TFDS data_dir: a local folder or a bucket; "" = TFDS's default
  config.data.path = ""  # the image folder, for name = "folder"
  config.data.channels = 3
  config.data.random_flip = True

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.ch = 128
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0
  config.model.dtype = "float32"  # "bfloat16" on TPU/GPU
  config.model.remat = False

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.prediction = "eps"
  config.diffusion.variance = "fixed_large"
  config.diffusion.loss = "simple"
  config.diffusion.timestep_sampler = "uniform"

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 2e-5
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 500_000
  config.train.batch_size = 64
  config.train.ema_decay = 0.9999
  config.train.ema_warmup = False
  config.train.steps_per_dispatch = 1
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.keep_checkpoints = 3
  config.train.sample_every = 50_000
  config.train.num_samples = 64
  return config
