"""improved DDPM's recipe on the digits: L_hybrid, the cosine schedule and learned variances.

Nichol & Dhariwal 2021 (Table 1-2) gain log-likelihood over DDPM's L_simple and
linear schedule by learning the reverse variances (learned_range, their eq.
15) with L_hybrid = L_simple + λ L_vlb (λ = 0.001) and switching to the cosine
schedule. The miniature of that comparison, on this CPU:

  ddpm train --config experiments/configs/digits.py --workdir runs/digits
  ddpm train --config experiments/configs/digits_hybrid.py --workdir runs/digits_hybrid
  ddpm evaluate --workdir runs/digits --bpd --split test
  ddpm evaluate --workdir runs/digits_hybrid --bpd --split test

Everything else is that of digits.py before its cosine-decay recipe (network, 3,000 steps at a
constant lr 1e-3, batch 64).
"""

import os

from diffusion.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.optim.update(lr=1e-3, warmup_steps=200, decay_steps=0)  # the recipe measured here
  config.train.update(num_steps=3000, sample_every=1500, sample_sampler="ddpm")
  config.diffusion.schedule = "cosine"
  config.diffusion.loss = "hybrid"
  config.diffusion.vlb_weight = 0.001
  config.diffusion.variance = "learned_range"
  config.model.learned_variance = True
  return config
