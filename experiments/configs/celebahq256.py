"""DDPM on CelebA-HQ 256×256, unconditional: the paper's 256×256 network (Ho et al. 2020, App. B).

113,673,219 parameters: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 ResNet blocks
per resolution, self-attention at 16×16, no dropout; the same network as the
LSUN church, bedroom and cat models. The paper shows samples (Fig. 1, 14)
and no FID for CelebA-HQ. The released checkpoint loads with
`python -m diffusion.convert DIFFUSERS_DIR OUT_DIR` (diffusers folder
google/ddpm-celebahq-256, downloaded by you; nothing is fetched here).

Build the network in Python:
  model = diffusion.models.from_config(get_config().model)
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "celebahq256"
  config.data.image_size = 256
  config.data.split = "train"
  config.data.data_dir = ""  # TFDS data_dir: a local folder or a bucket; "" = TFDS's default
  config.data.path = ""  # the image folder, for name = "folder"
  config.data.channels = 3

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
  return config
