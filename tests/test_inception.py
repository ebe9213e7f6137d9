"""The Flax FID Inception against an independent PyTorch computation with weights the test makes
(the real ones cannot be downloaded here), read through the same loader a user's file goes
through."""

import numpy as np
import pytest

import torch
F = torch.nn.functional

from diffusion.evaluation.inception import (  # noqa: E402
    InceptionFeatures, check_rgb_images, load_inception)


class Reference:
  """torchvision's Inception-v3 with pytorch-fid's FID blocks, written with torch.nn.functional.
  The first forward pass creates random weights named as in pytorch-fid's state dict."""

  def __init__(self, seed=0):
    self.state, self.generator = {}, torch.Generator().manual_seed(seed)

  def _rand(self, *shape, scale=1.0, offset=0.0):
    return torch.randn(*shape, generator=self.generator) * scale + offset

  def conv(self, name, x, out, kernel, stride=1, padding=0):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    if name + ".conv.weight" not in self.state:
      fan_in = x.shape[1] * kernel[0] * kernel[1]
      self.state[name + ".conv.weight"] = self._rand(out, x.shape[1], *kernel,
                                                     scale=(2 / fan_in) ** 0.5)
      self.state[name + ".bn.weight"] = self._rand(out, scale=0.1, offset=1.0)
      self.state[name + ".bn.bias"] = self._rand(out, scale=0.1)
      self.state[name + ".bn.running_mean"] = self._rand(out, scale=0.1)
      self.state[name + ".bn.running_var"] = self._rand(out, scale=0.1, offset=1.0).abs()
      self.state[name + ".bn.num_batches_tracked"] = torch.tensor(0)
    s = self.state
    x = F.conv2d(x, s[name + ".conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, s[name + ".bn.running_mean"], s[name + ".bn.running_var"],
                     s[name + ".bn.weight"], s[name + ".bn.bias"], training=False, eps=0.001)
    return F.relu(x)

  def block_a(self, n, x, pool_features):
    b1 = self.conv(n + ".branch1x1", x, 64, 1)
    b5 = self.conv(n + ".branch5x5_2", self.conv(n + ".branch5x5_1", x, 48, 1), 64, 5, padding=2)
    b3 = self.conv(n + ".branch3x3dbl_1", x, 64, 1)
    b3 = self.conv(n + ".branch3x3dbl_2", b3, 96, 3, padding=1)
    b3 = self.conv(n + ".branch3x3dbl_3", b3, 96, 3, padding=1)
    bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([b1, b5, b3, self.conv(n + ".branch_pool", bp, pool_features, 1)], 1)

  def block_b(self, n, x):
    b3 = self.conv(n + ".branch3x3", x, 384, 3, stride=2)
    bd = self.conv(n + ".branch3x3dbl_1", x, 64, 1)
    bd = self.conv(n + ".branch3x3dbl_2", bd, 96, 3, padding=1)
    bd = self.conv(n + ".branch3x3dbl_3", bd, 96, 3, stride=2)
    return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)

  def block_c(self, n, x, c7):
    b1 = self.conv(n + ".branch1x1", x, 192, 1)
    b7 = self.conv(n + ".branch7x7_1", x, c7, 1)
    b7 = self.conv(n + ".branch7x7_2", b7, c7, (1, 7), padding=(0, 3))
    b7 = self.conv(n + ".branch7x7_3", b7, 192, (7, 1), padding=(3, 0))
    bd = self.conv(n + ".branch7x7dbl_1", x, c7, 1)
    bd = self.conv(n + ".branch7x7dbl_2", bd, c7, (7, 1), padding=(3, 0))
    bd = self.conv(n + ".branch7x7dbl_3", bd, c7, (1, 7), padding=(0, 3))
    bd = self.conv(n + ".branch7x7dbl_4", bd, c7, (7, 1), padding=(3, 0))
    bd = self.conv(n + ".branch7x7dbl_5", bd, 192, (1, 7), padding=(0, 3))
    bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([b1, b7, bd, self.conv(n + ".branch_pool", bp, 192, 1)], 1)

  def block_d(self, n, x):
    b3 = self.conv(n + ".branch3x3_2", self.conv(n + ".branch3x3_1", x, 192, 1), 320, 3, stride=2)
    b7 = self.conv(n + ".branch7x7x3_1", x, 192, 1)
    b7 = self.conv(n + ".branch7x7x3_2", b7, 192, (1, 7), padding=(0, 3))
    b7 = self.conv(n + ".branch7x7x3_3", b7, 192, (7, 1), padding=(3, 0))
    b7 = self.conv(n + ".branch7x7x3_4", b7, 192, 3, stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)

  def block_e(self, n, x, max_pool):
    b1 = self.conv(n + ".branch1x1", x, 320, 1)
    b3 = self.conv(n + ".branch3x3_1", x, 384, 1)
    b3 = torch.cat([self.conv(n + ".branch3x3_2a", b3, 384, (1, 3), padding=(0, 1)),
                    self.conv(n + ".branch3x3_2b", b3, 384, (3, 1), padding=(1, 0))], 1)
    bd = self.conv(n + ".branch3x3dbl_1", x, 448, 1)
    bd = self.conv(n + ".branch3x3dbl_2", bd, 384, 3, padding=1)
    bd = torch.cat([self.conv(n + ".branch3x3dbl_3a", bd, 384, (1, 3), padding=(0, 1)),
                    self.conv(n + ".branch3x3dbl_3b", bd, 384, (3, 1), padding=(1, 0))], 1)
    bp = (F.max_pool2d(x, 3, stride=1, padding=1) if max_pool else
          F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    return torch.cat([b1, b3, bd, self.conv(n + ".branch_pool", bp, 192, 1)], 1)

  @torch.no_grad()
  def __call__(self, images_uint8):
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.conv("Conv2d_1a_3x3", x, 32, 3, stride=2)
    x = self.conv("Conv2d_2a_3x3", x, 32, 3)
    x = self.conv("Conv2d_2b_3x3", x, 64, 3, padding=1)
    x = F.max_pool2d(x, 3, stride=2)
    x = self.conv("Conv2d_3b_1x1", x, 80, 1)
    x = self.conv("Conv2d_4a_3x3", x, 192, 3)
    x = F.max_pool2d(x, 3, stride=2)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = self.block_a(name, x, pool)
    x = self.block_b("Mixed_6a", x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = self.block_c(name, x, c7)
    x = self.block_d("Mixed_7a", x)
    x = self.block_e("Mixed_7b", x, max_pool=False)
    x = self.block_e("Mixed_7c", x, max_pool=True)
    features = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    if "fc.weight" not in self.state:
      self.state["fc.weight"] = self._rand(1008, 2048, scale=0.02)
      self.state["fc.bias"] = self._rand(1008, scale=0.1)
    # The Inception Score's logits: the fc layer without its bias, as the original IS code.
    logits = F.linear(features, self.state["fc.weight"])
    return features.numpy(), logits.numpy()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A .pth of random weights in pytorch-fid's layout, and the reference network that made it."""
  reference = Reference()
  reference(np.zeros((1, 32, 32, 3), np.uint8))  # creates the weights
  path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
  torch.save(reference.state, path)
  return str(path), reference


def test_features_and_logits_equal_the_pytorch_computation(weights, tmp_path):
  path, reference = weights
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  expected_features, expected_logits = reference(images)
  inception = InceptionFeatures(load_inception(path), batch_size=8)
  features, logits = inception(images)
  assert features.shape == (3, 2048) and logits.shape == (3, 1008)
  assert features.dtype == np.float64
  rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
  assert rel(features, expected_features) < 1e-4, rel(features, expected_features)
  assert rel(logits, expected_logits) < 1e-4, rel(logits, expected_logits)
  # Converted once to .npz, the weights load without PyTorch and give the same features.
  from diffusion import cli
  assert cli.main(["convert-inception", path, str(tmp_path / "fid_inception.npz")]) == 0
  again, _ = InceptionFeatures(load_inception(str(tmp_path / "fid_inception.npz")),
                               batch_size=8)(images)
  np.testing.assert_array_equal(again, features)


@pytest.mark.parametrize("size", [8, 32, 300, 512])
def test_the_resize_to_299_equals_pytorch_bilinear(size):
  """Up- and downsampling: half-pixel centres, no antialiasing, as F.interpolate."""
  import jax
  x = np.random.default_rng(size).uniform(size=(1, size, size, 3)).astype(np.float32)
  ours = np.asarray(jax.image.resize(x, (1, 299, 299, 3), "bilinear", antialias=False))
  theirs = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                         mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_bad_weights_and_images(weights, tmp_path):
  path, reference = weights
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    load_inception(str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"))
  # Easy mistakes: reference statistics or a truncated file passed as the weights.
  np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError, match="not the FID Inception-v3: unexpected entry 'mu'"):
    load_inception(str(tmp_path / "stats.npz"))
  (tmp_path / "truncated.pth").write_bytes(open(path, "rb").read()[:1000])
  with pytest.raises(ValueError, match="are no PyTorch checkpoint \\(torch.load: "):
    load_inception(str(tmp_path / "truncated.pth"))
  state = dict(reference.state)
  state["Mixed_6b.branch1x1.conv.weight"] = state["Mixed_6b.branch1x1.conv.weight"][:10]
  del state["fc.bias"]
  torch.save(state, tmp_path / "broken.pth")
  with pytest.raises(ValueError, match="not the FID Inception-v3.*fc/bias.*Mixed_6b/branch1x1"):
    load_inception(str(tmp_path / "broken.pth"))
  with pytest.raises(ValueError, match="samples must be uint8"):
    check_rgb_images(np.zeros((2, 32, 32, 3), np.float32), "samples")
  with pytest.raises(ValueError, match=r"samples must have shape \[N, H, W, 1 or 3\]"):
    check_rgb_images(np.zeros((2, 32, 32, 4), np.uint8), "samples")
  assert check_rgb_images(np.zeros((2, 8, 8, 1), np.uint8)).shape == (2, 8, 8, 3)


def test_ddpm_evaluate_with_the_inception(weights, tmp_path, capsys):
  from diffusion import cli
  path, _ = weights
  rng = np.random.default_rng(1)
  samples = rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8)  # the sweep's shape below
  other = np.clip(samples.astype(int) + rng.integers(-60, 60, samples.shape), 0, 255)
  np.savez(tmp_path / "samples.npz", arr_0=samples)
  np.savez(tmp_path / "reference.npz", arr_0=other.astype(np.uint8))
  stats, out = tmp_path / "ref_stats.npz", tmp_path / "m.json"
  assert cli.main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--inception", path,
                   "--reference", str(tmp_path / "reference.npz"), "--save-reference", str(stats),
                   "--batch", "8", "--out", str(out)]) == 0
  first = __import__("json").loads(out.read_text())["samples"]
  assert {"fid", "kid", "is"} <= set(first) and first["fid"] > 0
  assert "FID" in capsys.readouterr().out
  # The saved statistics stand in for the reference images: the same FID.
  assert cli.main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--inception", path,
                   "--reference", str(stats), "--batch", "8", "--out", str(out)]) == 0
  second = __import__("json").loads(out.read_text())["samples"]
  assert second["fid"] == pytest.approx(first["fid"], rel=1e-6)
  # Samples of another resolution than the reference's: refused before any network runs.
  np.savez(tmp_path / "small.npz", arr_0=samples[:, :4, :4])
  assert cli.main(["evaluate", "--samples", str(tmp_path / "small.npz"), "--inception", path,
                   "--reference", str(stats)]) == 2
  assert "are 4×4 but --reference statistics were computed on 8×8" in capsys.readouterr().err


def test_ddpm_ema_sweeps_a_run_of_images_with_the_inception(weights, tmp_path, capsys):
  """`ddpm ema --sweep` on a run of images other than by the digits measures: each σ_rel's
  samples get FID, precision and recall from the FID Inception, the reference read once."""
  import json
  from _tiny import tiny_config
  from diffusion import cli
  from diffusion.training import train
  path, _ = weights
  workdir = str(tmp_path / "run")
  train(tiny_config(num_steps=4, ema_snapshot_every=2, checkpoint_every=2), workdir)
  rng = np.random.default_rng(2)
  np.savez(tmp_path / "reference.npz", arr_0=rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8))
  np.savez(tmp_path / "large.npz", arr_0=rng.integers(0, 256, (12, 16, 16, 1)).astype(np.uint8))
  base = ["ema", "--workdir", workdir, "--sweep", "0.07,0.1", "--num", "8", "--batch", "8",
          "--sampler", "ddim", "--steps", "2"]
  out = tmp_path / "sweep.json"
  assert cli.main([*base, "--inception", path, "--reference", str(tmp_path / "reference.npz"),
                   "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [r["ema"] for r in rows] == ["classic EMA 0.9", "σ_rel 0.07", "σ_rel 0.1"]
  assert all(r["fid"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
  assert len({r["fid"] for r in rows}) == 3  # three different averages of the parameters
  assert "best: σ_rel" in capsys.readouterr().out
  for extra, message in [
      (["--digits", "--inception", path], "with --digits (a digits run) or --inception"),
      (["--inception", path], "--inception needs --reference"),
      (["--inception", path, "--reference", str(tmp_path / "large.npz")],
       "are 8×8 but --reference images are 16×16")]:
    assert cli.main([*base, *extra]) == 2
    assert message in capsys.readouterr().err
