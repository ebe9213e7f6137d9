"""Protein backbones: Cα traces of 16 residues generated with an E(3)-equivariant network (EGNN).

The survey's protein structure design (Anand & Achim 2022) in small: the data
are ideal α-helices and β-hairpins built from their Cα bond angles and
torsions with noise on both (`diffusion.data.synthetic`, "backbones"; no
protein files ship with the project's dependencies), centred and randomly
rotated; the network is an EGNN (Satorras et al. 2021) with sequence-position
features, and the diffusion runs in the zero-centre-of-mass subspace.

  ddpm train --config experiments/configs/protein.py --workdir runs/protein
  ddpm sample --workdir runs/protein --num 256 --out runs/protein/samples.npz
  ddpm evaluate --samples runs/protein/samples.npz --synthetic backbones

The samples are Cα coordinates in Å (arr_0, float32 [N, 16, 3]) with a PDB file
beside them; the evaluation compares the Cα-Cα distances (3.8 Å), bond angles and
radii of gyration with held-out chains and with noise. Measured on a 2-core CPU:
training 13 min 26 s; 256 samples (ancestral, 1,000 steps) 1 min 25 s; Cα-Cα
3.71 Å on average (data 3.80; W1 0.26 Å against noise's 5.9), bond angles W1 10.5°
(noise 46°), radius of gyration W1 0.11 Å (noise 0.35). Details: experiments/README.md.
"""

import os

import ml_collections

from diffusion.config import load_config


def get_config() -> ml_collections.ConfigDict:
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.optim.update(lr=1e-3, warmup_steps=200, decay_steps=0)  # the recipe measured here
  config.train.sample_sampler = "ddpm"
  config.data.name = "backbones"
  config.data.shape = (16, 3)
  config.data.kind = "points"
  config.data.dtype = "float32"
  config.data.scale = 4.0  # Å per model unit: about unit variance per coordinate
  config.data.random_rotation = True
  config.data.size = 0  # 0: the set's default (4,096 chains)

  config.model = ml_collections.ConfigDict()
  config.model.name = "egnn"
  config.model.hidden = 64
  config.model.depth = 4
  config.model.chain = True
  config.model.max_separation = 8
  config.model.num_classes = 0
  config.model.dtype = "float32"

  config.diffusion.clip_x0 = False  # coordinates are not bounded to [-1, 1]
  config.train.num_steps = 3000
  config.train.sample_every = 1500
  return config
