"""DDPM on CIFAR-10 32×32, unconditional: the paper's network (Ho et al. 2020, App. B).

35,746,307 parameters: ch 128, ch_mult (1, 2, 2, 2), 2 ResNet blocks per
resolution, self-attention at 16×16, dropout 0.1. The paper reports FID 3.17,
IS 9.46 and NLL ≤ 3.75 bits/dim (Table 1). The released checkpoint loads with
`python -m diffusion.convert DIFFUSERS_DIR OUT_DIR` (diffusers folder
google/ddpm-cifar10-32, downloaded by you; nothing is fetched here).

Build the network in Python:
  model = diffusion.models.from_config(get_config().model)
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.split = "train"
  config.data.data_dir = ""  # TFDS data_dir: a local folder or a bucket; "" = TFDS's default
  config.data.path = ""  # the image folder, for name = "folder"
  config.data.channels = 3

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.model.dtype = "float32"  # "bfloat16" on TPU/GPU
  config.model.remat = False

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  return config
