"""What the application tests share: a digits run trained in a process of its own, PSNR, PNGs."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from _tiny import CONFIGS

DIGITS = os.path.join(CONFIGS, "digits.py")


def train_in_a_process(workdir, *overrides, timeout=900):
  """`ddpm train` on the digits config shortened to T = 200 (betas scaled by 1000/T, as
  improved DDPM does), batch 32, in a process of its own on one CPU device with XLA's usual
  optimisation: the tests' settings (8 devices, unoptimised code) would make it twice as slow."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  run = subprocess.run([
      sys.executable, "-m", "diffusion", "train", "--config", DIGITS, "--workdir", str(workdir),
      "--config.train.batch_size=32", "--config.diffusion.num_steps=200",
      "--config.diffusion.beta_start=5e-4", "--config.diffusion.beta_end=0.1",
      "--config.optim.warmup_steps=100", "--config.train.log_every=100",
      "--config.train.num_samples=8", *overrides], env=env, capture_output=True, text=True,
      timeout=timeout)
  assert run.returncode == 0, run.stderr[-2000:]
  return workdir


def psnr(x, clean):
  """Per image, x in [-1, 1], clean uint8."""
  return 10 * np.log10(1 / np.mean(((x + 1) / 2 - clean / 255) ** 2, axis=(1, 2, 3)))


def save(path, image):
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
  return str(path)
