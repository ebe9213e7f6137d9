"""`ddpm evaluate` and the dataset bits/dim: the sharded bound equals the core's terms summed by
hand, and bad input stops with a message naming the argument."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from _tiny import CONFIGS, tiny_overrides
from diffusion import cli
from diffusion.data import DigitsSource
from diffusion.evaluation.nll import dataset_bits_per_dim
from diffusion.forward import q_sample
from diffusion.likelihood import prior_bpd, vlb_term
from diffusion.config import schedule_from_config
from diffusion.distributed import make_mesh, replicate
from diffusion.images import to_float
from diffusion.runs import build, load_run

DIGITS = os.path.join(CONFIGS, "digits.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny digits network (T = 20) after 6 training steps."""
  workdir = tmp_path_factory.mktemp("tiny")
  assert cli.main(["train", "--config", DIGITS, "--workdir", str(workdir),
                   *tiny_overrides()]) == 0
  return str(workdir)


def test_dataset_bpd_equals_the_sum_of_the_core_terms(tiny_run):
  config, model, params, _ = load_run(tiny_run)
  mesh = make_mesh()
  images = DigitsSource(split="test").images[:10]  # 10 on 8 devices: padded batches
  key = jax.random.key(3)
  result = dataset_bits_per_dim(build(config, model), replicate(params, mesh), images, mesh, key,
                                batch=8, chunk_size=3, progress=False)
  schedule = schedule_from_config(config)
  d = config.diffusion
  denoise = jax.jit(lambda x, t: model(params, x, t))
  x0 = to_float(images)
  expected = []
  for i in range(10):  # example i, step t: noise from fold_in(fold_in(key, i), t)
    x = x0[i:i + 1]
    total = float(prior_bpd(schedule, x)[0])
    for t in range(d.num_steps):
      noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), t), x.shape)
      tt = np.array([t], np.int32)
      x_t = q_sample(schedule, x, tt, noise)
      total += float(vlb_term(schedule, denoise(x_t, tt), x, x_t, tt, prediction=d.prediction,
                              variance=d.variance)[0])
    expected.append(total)
  np.testing.assert_allclose(result["per_image"], expected, rtol=1e-5)
  assert result["bpd"] == pytest.approx(np.mean(expected), rel=1e-5)
  assert result["terms"].shape == (20,) and result["num_images"] == 10
  # Another batch size, the same noise per image: the same figures.
  again = dataset_bits_per_dim(build(config, model), replicate(params, mesh), images, mesh, key,
                               batch=16, chunk_size=20, progress=False)
  np.testing.assert_allclose(again["per_image"], result["per_image"], rtol=1e-5)
  for wrong in (np.zeros((2, 16, 16, 1), np.uint8), images[:0]):  # not the run's 8×8×1; none
    with pytest.raises(ValueError, match=r"images must be \[N >= 1, 8, 8, 1\]"):
      dataset_bits_per_dim(build(config, model), params, wrong, mesh, key)


def test_evaluate_bpd_on_a_split(tiny_run, tmp_path, capsys):
  out = tmp_path / "bpd.json"
  assert cli.main(["evaluate", "--workdir", tiny_run, "--bpd", "--split", "test", "--num", "16",
                   "--batch", "16", "--out", str(out)]) == 0
  assert "bits/dim on 16 images of split 'test'" in capsys.readouterr().out
  figures = json.loads(out.read_text())["bpd"]
  # A network after 6 steps: a poor but finite bound.
  assert 0.5 < figures["bpd"] < 50 and figures["num_images"] == 16
  assert os.path.exists(os.path.join(tiny_run, f"bpd_terms_test_step{figures['step']}.npy"))


def test_evaluate_digits_measures(tmp_path, capsys):
  np.savez(tmp_path / "held_out.npz", arr_0=DigitsSource(split="test").images)
  assert cli.main(["evaluate", "--samples", str(tmp_path / "held_out.npz"), "--digits",
                   "--out", str(tmp_path / "m.json")]) == 0
  printed = capsys.readouterr().out
  assert "297 samples" in printed and "digits-FID" in printed and "digits-IS" in printed
  metrics = json.loads((tmp_path / "m.json").read_text())["samples"]
  assert metrics["fid"] < 20 and metrics["is"] > 7
  # A folder of PNGs reads the same as the .npz.
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(DigitsSource(split="test").images[:40]):
    Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
  assert cli.main(["evaluate", "--samples", str(folder), "--digits"]) == 0
  assert "40 samples" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to evaluate"),
    (["--bpd"], "--bpd needs --workdir"),
    (["--samples", "{tmp}/missing.npz", "--digits"], "--samples '.*missing.npz' does not exist"),
    (["--samples", "{tmp}/float.npz", "--digits"], "--samples .* holds float32"),
    (["--samples", "{tmp}/big.npz", "--digits"], r"samples must be digits of shape \[N, 8, 8, 1\]"),
    (["--samples", "{tmp}/big.npz"], "needs --inception WEIGHTS"),
    (["--samples", "{tmp}/big.npz", "--inception", "{tmp}/pt_inception.pth"],
     "Inception weights .* do not exist.*nothing is downloaded"),
    (["--samples", "{tmp}/mixed", "--digits"], "mixes image shapes"),
    (["--workdir", "{tmp}", "--bpd", "--samples", "{tmp}/big.npz", "--inception", "{tmp}/w.pth"],
     "Inception weights .* do not exist"),  # before the (minutes of) --bpd, not after
    (["--workdir", "{tmp}", "--bpd", "--chunk", "0"], "--chunk must be >= 1; got 0"),
    (["--workdir", "{tmp}", "--bpd"], "holds no checkpoints"),
    (["--samples", "{tmp}/big.npz", "--digits", "--inception", "w.pth"], "--digits .* takes no"),
    (["--samples", "{tmp}/big.npz", "--digits", "--digits-reference", "val"],
     "--digits-reference must be one of train, test, all"),
    (["--samples", "{tmp}/big.npz", "--save-reference", "s.npz"], "--save-reference needs"),
    (["--samples", "{tmp}/one.npz", "--digits"], "is a single .npy array"),
    (["--samples", "{tmp}/text.npz", "--digits"], "is no .npz archive"),
])
def test_evaluate_bad_input(tmp_path, capsys, monkeypatch, argv, message):
  """Refused before any work: the digits classifier (trained on a cold cache, 51 s) is not
  loaded for samples it would refuse."""
  from diffusion.evaluation import digits

  def load(*args, **kwargs):
    raise AssertionError("the digits classifier was loaded before the input was checked")

  monkeypatch.setattr(digits.DigitsEvaluator, "load", load)
  np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 1), np.float32))
  np.savez(tmp_path / "big.npz", arr_0=np.zeros((4, 16, 16, 1), np.uint8))
  np.save(tmp_path / "one.npy", np.zeros((4, 8, 8, 1), np.uint8))
  os.replace(tmp_path / "one.npy", tmp_path / "one.npz")
  (tmp_path / "text.npz").write_text("not an archive\n")
  (tmp_path / "mixed").mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
  Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "mixed" / "b.png")
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  assert cli.main(["evaluate", *argv]) == 2
  assert __import__("re").search(message, capsys.readouterr().err)


def test_the_recipes_run(tiny_run, tmp_path, capsys):
  """experiments/: a data split as reference .npz, and the sampler table on a run."""
  import importlib.util
  def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, os.pardir, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  out = load("dataset_to_npz").main(["--config", DIGITS, "--split", "test", "--out",
                                     str(tmp_path / "test.npz")])
  with np.load(out) as data:
    np.testing.assert_array_equal(data["arr_0"], DigitsSource(split="test").images)
  results = load("digits_samplers").main(["--workdir", tiny_run, "--num", "16", "--rows",
                                          "ddim:3:0", "dpm++:2", "--out", str(tmp_path / "t.json")])
  assert [r["row"] for r in results] == ["held-out test split", "ddim S=3 η=0", "dpm++ S=2"]
  assert "| ddim S=3 η=0" in capsys.readouterr().out
  assert all(r["fid"] > 0 for r in results)
