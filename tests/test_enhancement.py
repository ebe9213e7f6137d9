"""Enhancement: a model conditioned on degraded digits restores them; the degradations and the
paired folders it trains on."""

import os

import numpy as np
import pytest
from PIL import Image

from _digits_apps import psnr, save, train_in_a_process
from diffusion import cli
from diffusion.applications import enhance
from diffusion.data import DigitsSource, PairedFolderSource, degrade
from diffusion.distributed import make_mesh, replicate
from diffusion.images import to_float
from diffusion.runs import build, load_run
from diffusion.runs import base_key


def test_enhancement_trains_on_degraded_digits_and_restores_them(tmp_path, capsys):
  """A model trained on blurred, darkened digits (120 steps, digits.py's lr 4e-3 decayed to 0)
  restores 32 held-out ones: the PSNR gain over the degraded input is about 6.7 dB (measured;
  8 dB after 200 steps at a constant lr 1e-3); at least 5 dB is required, and an improvement on
  at least 90% of the images."""
  workdir = train_in_a_process(
      tmp_path / "run", "--config.train.num_steps=120", "--config.optim.warmup_steps=20",
      "--config.optim.decay_steps=120", "--config.train.checkpoint_every=120",
      "--config.train.sample_every=120", "--config.data.condition=degrade",
      "--config.data.degradations=blur,low_light", "--config.model.cond_channels=1")
  clean = DigitsSource(split="test").images[:32]
  degraded = np.stack([degrade(image, ("blur", "low_light"), np.random.default_rng([7, i]))
                       for i, image in enumerate(clean)])
  config, model, params, _ = load_run(str(workdir))
  mesh = make_mesh()
  enhanced = enhance(build(config, model), replicate(params, mesh), degraded, mesh,
                     base_key(0, "sample"),
                     sampler="ddim", steps=10)
  gain = psnr(enhanced, clean) - psnr(to_float(degraded), clean)
  print(f"enhancement PSNR gain: {gain.mean():.2f} dB")
  assert gain.mean() > 5 and np.mean(gain > 0) >= 0.9, gain
  out = tmp_path / "enhanced.png"
  assert cli.main(["enhance", "--workdir", str(workdir), "--image",
                   save(tmp_path / "degraded.png", degraded[0]), "--out", str(out),
                   "--sampler", "ddim", "--steps", "5"]) == 0
  assert np.asarray(Image.open(out)).shape == (8, 8)
  # The other commands need an unconditioned model: named before anything runs.
  for argv in (["sample", "--num", "4", "--out", str(tmp_path / "s.npz")],
               ["denoise", "--image", str(tmp_path / "degraded.png"), "--sigma", "0.1", "--out",
                str(tmp_path / "d.png")]):
    assert cli.main([argv[0], "--workdir", str(workdir), *argv[1:]]) == 2
    assert "this model is conditioned on an input (cond_channels = 1)" in \
        capsys.readouterr().err


def test_degradations_and_paired_folders(tmp_path):
  image = DigitsSource(image_size=16, channels=3).images[3]
  for kind in ("blur", "colour_cast", "low_light", "downscale"):
    a = degrade(image, (kind,), np.random.default_rng(1))
    assert a.shape == image.shape and a.dtype == np.uint8 and not np.array_equal(a, image)
    np.testing.assert_array_equal(a, degrade(image, (kind,), np.random.default_rng(1)))
  with pytest.raises(ValueError, match="unknown 'fog'"):
    degrade(image, ("fog",), np.random.default_rng(0))
  for split in ("input", "target"):
    os.makedirs(tmp_path / split)
    for name in ("a.png", "b.png"):
      save(tmp_path / split / name, image if split == "target" else 255 - image)
  pairs = PairedFolderSource(str(tmp_path), 16, 3)
  target, label, cond = pairs[1]["x"], pairs[1]["label"], pairs[1]["cond"]
  assert label == 0  # one class
  np.testing.assert_array_equal(target, image)
  np.testing.assert_array_equal(cond, 255 - image)
  os.remove(tmp_path / "input" / "b.png")
  with pytest.raises(ValueError, match=r"unpaired: \['b.png'\]"):
    PairedFolderSource(str(tmp_path), 16, 3)
