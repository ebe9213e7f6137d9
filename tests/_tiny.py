"""A tiny version of the digits config, for tests that train."""

import os

from diffusion.config import load_config

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "configs")


def tiny_config(**train):
  config = load_config(os.path.join(CONFIGS, "digits.py"))
  config.model.ch = 16
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.num_groups = 4
  config.model.dropout = 0.1
  config.diffusion.num_steps = 20
  config.train.update(dict(num_steps=6, batch_size=16, log_every=2, checkpoint_every=3,
                           sample_every=100, num_samples=8, ema_decay=0.9))
  config.train.update(train)
  return config


def tiny_overrides(**train):
  """The same as command-line overrides of digits.py."""
  values = dict(model_ch=16, model_ch_mult="1,2", model_num_res_blocks=1,
                model_attn_resolutions="4", model_num_groups=4, model_dropout=0.1,
                diffusion_num_steps=20, train_num_steps=6, train_batch_size=16,
                train_log_every=2, train_checkpoint_every=3, train_sample_every=100,
                train_num_samples=8, train_ema_decay=0.9)
  values.update({f"train_{k}": v for k, v in train.items()})
  out = []
  for key, value in values.items():
    section, name = key.split("_", 1)
    if isinstance(value, str) and "," in value or key in ("model_attn_resolutions",):
      value = f"({value},)" if "," not in str(value) else f"({value})"
    out.append(f"--config.{section}.{name}={value}")
  return out
