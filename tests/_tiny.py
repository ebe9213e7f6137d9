"""A tiny version of the digits config, for tests that train."""

import os

from diffusion.config import load_config

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "configs")


def tiny_config(**train):
  config = load_config(os.path.join(CONFIGS, "digits.py"))
  config.model.ch = 16
  config.model.ch_mult = (1,)  # one resolution: the quickest network to compile
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.num_groups = 4
  config.model.dropout = 0.1
  config.diffusion.num_steps = 20
  config.optim.update(lr=1e-3, warmup_steps=200, decay_steps=0)  # the tests' tolerances' recipe
  config.train.update(dict(num_steps=6, batch_size=16, log_every=2, checkpoint_every=3,
                           sample_every=100, num_samples=8, ema_decay=0.9))
  config.train.update(train)
  return config


def tiny_overrides(**train):
  """tiny_config() as command-line overrides of digits.py (`train` overrides config.train)."""
  values = {"model.ch": 16, "model.ch_mult": "(1,)", "model.num_res_blocks": 1,
            "model.attn_resolutions": "(8,)", "model.num_groups": 4, "model.dropout": 0.1,
            "diffusion.num_steps": 20, "optim.lr": 1e-3, "optim.warmup_steps": 200,
            "optim.decay_steps": 0, "train.num_steps": 6, "train.batch_size": 16,
            "train.log_every": 2, "train.checkpoint_every": 3, "train.sample_every": 100,
            "train.num_samples": 8, "train.ema_decay": 0.9}
  values.update({f"train.{k}": v for k, v in train.items()})
  return [f"--config.{key}={value}" for key, value in values.items()]
