"""3-D volumes: head phantoms (a stand-in for MRI/CT) generated with a 3-D Diffusion Transformer.

The survey's 3-D medical image generation (Khader et al. 2023) in small: the data
are 16³ Shepp-Logan-style phantoms, a low-intensity ellipsoid "skull" holding one to
three brighter ellipsoids at random places, sizes and intensities
(`diffusion.data.synthetic`, "phantoms"; nothing to download); the network is a
DiT over 4³ patches (64 tokens). The DDPM U-Net takes volumes too
(`config.model.name = "unet"` with the digits' U-Net keys), but on a 2-core CPU it
trains 16³ volumes at about 9 examples/s against the DiT's 130 (docs/benchmarks.md),
too slow for a run of minutes; on an accelerator either serves.

  ddpm train --config experiments/configs/volumes3d.py --workdir runs/volumes3d
  ddpm sample --workdir runs/volumes3d --num 256 --sampler ddim --steps 100 --out runs/volumes3d/samples.npz
  ddpm evaluate --samples runs/volumes3d/samples.npz --synthetic phantoms

The training previews and the sample preview show the middle slice along each
axis; the evaluation compares the skull's volume fraction, the number of bright
blobs and their intensity with held-out volumes and with noise. Measured on a
2-core CPU: training 9 min 23 s; 256 samples (DDIM, 100 steps) 1 min 2 s; the
skull's volume fraction matches (W1 0.013; noise 0.58), but the inner ellipsoids
come out dim and speckled (bright-region intensity W1 0.24, worse than noise's 0.10).
Details: experiments/README.md.
"""

import os

import ml_collections

from diffusion.config import load_config


def get_config() -> ml_collections.ConfigDict:
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.optim.update(lr=1e-3, warmup_steps=200, decay_steps=0)  # the recipe measured here
  config.train.sample_sampler = "ddpm"
  config.data.name = "phantoms"
  config.data.shape = (16, 16, 16, 1)
  config.data.kind = "volume"
  config.data.dtype = "uint8"
  config.data.random_flip = True  # phantoms are symmetric in distribution
  config.data.size = 0  # 0: the set's default (2,048 volumes)

  config.model = ml_collections.ConfigDict()
  config.model.name = "dit"
  config.model.patch_size = 4
  config.model.hidden_size = 128
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.num_classes = 0
  config.model.dtype = "float32"

  config.train.num_steps = 2500
  config.train.batch_size = 32
  config.train.sample_every = 1250
  config.train.num_samples = 16
  return config
