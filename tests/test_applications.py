"""The applications on a DDPM trained on the digits: inpainting, denoising, anomaly detection,
class-conditional data augmentation, and their bad input (enhancement: test_enhancement.py)."""

import csv
import dataclasses
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image

from _digits_apps import psnr, save, train_in_a_process
from _tiny import tiny_config
from diffusion import cli
from diffusion.applications import auroc, denoise
from diffusion.data import DigitsSource, ImageFolderSource
from diffusion.distributed import make_mesh, replicate
from diffusion.images import to_float
from diffusion.runs import build, load_run
from diffusion.runs import base_key

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A class-conditional digits model with label dropout 0.2 (so also unconditional through
  its null class), 1,200 steps at a constant lr 1e-3: good enough to denoise, inpaint, tell
  digits from non-digits, and draw a requested digit under guidance. (700 steps with digits.py's
  lr 4e-3 decayed to 0 drew the requested digit 65% of the time under guidance: too few.)"""
  return train_in_a_process(
      tmp_path_factory.mktemp("digits"), "--config.train.num_steps=1200",
      "--config.optim.lr=1e-3", "--config.optim.decay_steps=0",
      "--config.train.checkpoint_every=1200", "--config.train.sample_every=1200",
      "--config.model.num_classes=10", "--config.train.label_dropout=0.2")


@pytest.fixture(scope="module")
def classifier():
  from diffusion.evaluation.digits import DigitsEvaluator
  return DigitsEvaluator.load()


def test_repaint_completes_half_digits_recognisably(digits_run, classifier):
  """120 held-out digits with their right half masked. The digits classifier recognises
  RePaint's completions far more often than the half-blank digits, and resampling (jump
  length 5, 5 resamplings on a 50-step chain) does at least as well as plain replacement (1
  resampling). Measured on this fixture: half-blank 23%, plain replacement 61%, resampling
  62% (with another seed 50% and 58%); the margins below are about 3 standard errors of a
  difference of two such proportions."""
  from diffusion.applications import inpaint
  config, model, params, _ = load_run(str(digits_run))
  mesh = make_mesh()
  params = replicate(params, mesh)
  source = DigitsSource(split="test")
  images, labels = source.images[:120], source.labels[:120]
  mask = np.ones((8, 8), bool)
  mask[:, 4:] = False
  recognised = lambda x: float(np.mean(classifier.probs(x).argmax(axis=1) == labels))
  half_blank = recognised(np.where(mask[None, ..., None], images, 0))
  completed = {}
  for resamplings in (1, 5):
    out = inpaint(build(config, model), params, images, mask, mesh, base_key(0, "sample"), steps=50,
                  jump_length=5, resamplings=resamplings)
    np.testing.assert_array_equal(out[:, :, :4], images[:, :, :4])
    completed[resamplings] = recognised(out)
  print(f"recognised: half-blank {half_blank:.3f}, RePaint {completed}")
  assert completed[5] > half_blank + 0.2, (half_blank, completed)
  assert completed[5] > completed[1] - 0.15, completed


def test_guidance_draws_the_requested_digit(digits_run, classifier):
  """200 samples, 20 of each digit: with guidance w = 5 the classifier finds the requested
  digit in at least 90% (measured: 95.5%), far more often than without (49.5%)."""
  from diffusion.sample_run import draw_samples
  config, model, params, _ = load_run(str(digits_run))
  labels = np.arange(200) % 10
  hits = {}
  for guidance in (None, 5.0):
    samples = draw_samples(build(config, model), labels, variables=params, sampler="ddim", steps=20,
                           guidance=guidance)
    hits[guidance] = float(np.mean(classifier.probs(samples).argmax(axis=1) == labels))
  print("requested digit recognised, without and with guidance:", hits)
  assert hits[5.0] >= 0.9 and hits[5.0] > hits[None] + 0.3, hits


def test_denoising_improves_psnr(digits_run):
  config, model, params, _ = load_run(str(digits_run))
  mesh = make_mesh()
  params = replicate(params, mesh)
  clean = DigitsSource(split="test").images[:16]
  rng = np.random.default_rng(1)
  gains = {}
  for sigma in (0.1, 0.2, 0.4):
    noisy = np.clip(np.round(clean + rng.normal(0, sigma * 255, clean.shape)), 0, 255)
    noisy = noisy.astype(np.uint8)
    samples = denoise(build(config, model), params, np.repeat(noisy, 4, axis=0), sigma, mesh,
                      base_key(0, "sample"))
    mean = samples.reshape(16, 4, 8, 8, 1).mean(axis=1)  # the posterior mean: the MMSE estimate
    gains[sigma] = psnr(mean, clean).mean() - psnr(to_float(noisy), clean).mean()
  print("PSNR gain (dB) of the 4-sample posterior mean:", gains)
  assert all(gain > 0.5 for gain in gains.values()), gains


def test_the_denoise_command_writes_the_uncertainty(digits_run, tmp_path, capsys):
  clean = DigitsSource(split="test").images[100]
  noisy = np.clip(clean + np.random.default_rng(0).normal(0, 50, clean.shape), 0, 255)
  out = tmp_path / "clean.png"
  assert cli.main(["denoise", "--workdir", str(digits_run),
                   "--image", save(tmp_path / "noisy.png", noisy.astype(np.uint8)),
                   "--sigma", "0.2", "--out", str(out), "--num-samples", "4"]) == 0
  assert np.asarray(Image.open(out)).shape == (8, 8)
  data = np.load(tmp_path / "clean.npz")
  assert data["mean"].shape == data["std"].shape == (8, 8, 1) and data["std"].max() > 0
  assert data["samples"].shape == (4, 8, 8, 1)
  assert os.path.exists(tmp_path / "clean_std.png")
  assert capsys.readouterr().out.endswith(
      f"{out}: the mean of 4 samples (and clean.npz, clean_std.png)\n")  # says what it wrote


def test_anomaly_scores_separate_digits_from_non_digits(digits_run, tmp_path, capsys):
  source = DigitsSource(split="test")  # digits the model has not seen
  rng = np.random.default_rng(0)
  normal = source.images[200:232]
  anomalous = np.concatenate([rng.integers(0, 256, (16, 8, 8, 1)).astype(np.uint8),  # noise
                              255 - source.images[100:116]])  # inverted digits
  images = np.concatenate([normal, anomalous])
  labels = np.array([0] * 32 + [1] * 32)
  np.savez(tmp_path / "images.npz", images=images, labels=labels)
  out = tmp_path / "scores.csv"
  assert cli.main(["anomaly", "--workdir", str(digits_run), "--images",
                   str(tmp_path / "images.npz"), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"{out}: the scores of 64 examples (maps: scores_maps.npz)" in printed
  with open(out) as f:
    rows = list(csv.DictReader(f))
  scores = np.array([float(r["score"]) for r in rows])
  assert [int(r["label"]) for r in rows] == list(labels)
  value = auroc(scores, labels)
  print(f"anomaly AUROC, digits vs noise and inverted digits: {value:.3f}")
  assert f"AUROC {value:.4f}" in printed and value > 0.9
  maps = np.load(tmp_path / "scores_maps.npz")["maps"]
  assert maps.shape == (64, 8, 8)

  # A folder with normal/ and anomalous/ subfolders gives the labels too.
  for name, group in (("normal", normal[:4]), ("anomalous", anomalous[:4])):
    os.makedirs(tmp_path / "folder" / name)
    for i, image in enumerate(group):
      save(tmp_path / "folder" / name / f"{i}.png", image)
  assert cli.main(["anomaly", "--workdir", str(digits_run), "--images", str(tmp_path / "folder"),
                   "--out", str(tmp_path / "folder.csv"), "--sampler", "ddim", "--steps",
                   "10"]) == 0
  assert "AUROC" in capsys.readouterr().out
  # Normal examples only: the scores, and no AUROC (a note, not an error).
  np.savez(tmp_path / "normal.npz", images=normal[:4], labels=np.zeros(4, int))
  assert cli.main(["anomaly", "--workdir", str(digits_run), "--images",
                   str(tmp_path / "normal.npz"), "--out", str(tmp_path / "normal.csv"),
                   "--sampler", "ddim", "--steps", "10"]) == 0
  assert "no AUROC" in capsys.readouterr().out
  assert len(open(tmp_path / "normal.csv").read().splitlines()) == 5


def test_auroc_counts_the_ordered_pairs():
  # Anomalous 0.35 and 0.8 against normal 0.1, 0.4 and the tie 0.35: 1 + 0 + 0.5 + 3 of 6 pairs.
  assert auroc([0.1, 0.4, 0.35, 0.35, 0.8], [0, 0, 0, 1, 1]) == pytest.approx(4.5 / 6)
  with pytest.raises(ValueError, match="needs both normal"):
    auroc([0.1, 0.2], np.zeros(2))


@pytest.mark.parametrize("argv, message", [
    (["inpaint", "--image", "BIG", "--mask", "MASK", "--out", "o.png"],
     r"--image .* has shape \(16, 16, 1\) \(H, W, C\); the model takes \(8, 8, 1\)"),
    (["inpaint", "--image", "IMG", "--mask", "BIG", "--out", "o.png"], "--mask .* is 16×16"),
    (["inpaint", "--image", "IMG", "--mask", "GREY", "--out", "o.png"], "--mask .* must be binary"),
    (["inpaint", "--image", "IMG", "--mask", "MASK", "--out", "o.png", "--steps", "5000"],
     r"--steps must lie in \[1, 200\]"),
    (["inpaint", "--image", "IMG", "--mask", "MASK", "--out", "o.png", "--steps", "5",
      "--jump-length", "50", "--resamplings", "2"],
     r"--jump-length 50 must lie in \[1, 5\) \(--steps\) for the chain to jump back"),
    (["denoise", "--image", "IMG", "--sigma", "0", "--out", "o.png"], r"--sigma must lie in \(0, 1\]"),
    (["denoise", "--image", "IMG", "--sigma", "1.5", "--out", "o.png"], r"--sigma must lie in \(0, 1\]"),
    (["denoise", "--image", "IMG", "--sigma", "0.1", "--out", "o.png", "--sampler", "euler"],
     "--sampler must be one of ddpm, ddim, dpm\\+\\+"),
    (["sample", "--num", "4", "--out", "s.npz", "--steps", "201"], r"--steps must be an int in \[1, 200\]"),
    (["sample", "--num", "4", "--out", "s.npz", "--class", "10"], r"--class must lie in \[0, 10\)"),
    (["sample", "--num", "4", "--out", "s.npz", "--eta", "2", "--sampler", "ddim"],
     r"--eta must be a number in \[0, 1\]"),
    (["sample", "--num", "4", "--out", "s.npz", "--eta", "0.5", "--sampler", "ddpm"],
     "--eta is no option of sampler 'ddpm'"),
    (["enhance", "--image", "IMG", "--out", "o.png"], "not conditioned"),
    (["denoise", "--image", "IMG", "--sigma", "0.1", "--out", "o.png", "--class", "-1"],
     r"--class must lie in \[0, 10\)"),
    (["inpaint", "--image", "IMG", "--mask", "MASK", "--out", "o.png", "--num-samples", "0"],
     "--num-samples must be >= 1; got 0"),
    (["denoise", "--image", "IMG", "--sigma", "0.1", "--out", "o.jpg"],
     r"--out .*o.jpg' must end in .png \(images\) or .npz"),
    # Nothing the user gave is overwritten, nor anything written twice.
    (["denoise", "--image", "IMG", "--sigma", "0.1", "--out", "IMG"],
     r"--out .*IMG.png' is the input --image: writing it would overwrite it"),
    (["inpaint", "--image", "IMG", "--mask", "MASK", "--out", "IMG.npz"],
     r"the preview beside --out .*IMG.png' is the input --image"),
    (["inpaint", "--image", "IMG", "--mask", "MASK", "--out", "MASK.npz"],
     r"the preview beside --out .*MASK.png' is the input --mask"),
    (["sample", "--num", "4", "--out", "o.png"], r"--out .*o.png' must end in .npz"),
    (["sample", "--num", "4", "--out", "TMP", "--layout", "folders"],
     "is a folder that already holds files"),
    (["sample", "--num", "4", "--out", "o.npz", "--layout", "folders"],
     "--layout folders writes a folder of PNGs; give a folder name"),
    (["anomaly", "--images", "IMG", "--out", "o.npz"], r"--out .*o.npz' must end in .csv"),
    # --steps beyond the chain that --sigma leaves is refused, not cut short.
    (["denoise", "--image", "IMG", "--sigma", "0.1", "--out", "o.png", "--steps", "150"],
     r"--steps 150: the noise of --sigma 0.1 is the model's step \d+, so the chain from it "
     r"has at most \d+ steps"),
])
def test_bad_input_is_named(digits_run, tmp_path, capsys, argv, message):
  files = {"BIG": np.zeros((16, 16, 1), np.uint8), "IMG": np.zeros((8, 8, 1), np.uint8),
           "MASK": np.full((8, 8, 1), 255, np.uint8), "GREY": np.full((8, 8, 1), 128, np.uint8)}
  paths = {name: save(tmp_path / f"{name}.png", image) for name, image in files.items()}
  argv = [paths.get(a, a) for a in argv]
  argv = argv[:1] + ["--workdir", str(digits_run)] + [
      str(tmp_path) if a == "TMP" else str(tmp_path / a)
      if a in ("o.png", "o.jpg", "s.npz", "o.npz", "IMG.npz", "MASK.npz") else a
      for a in argv[1:]]
  assert cli.main(argv) == 2
  assert re.search(message, capsys.readouterr().err)


def test_class_options_need_a_class_conditional_model():
  from diffusion import models
  from diffusion.sampling import check_options, class_labels
  config = tiny_config()
  model = models.from_config(config.model)
  with pytest.raises(ValueError, match="`guidance` needs a class-conditional model"):
    check_options(model, 20, steps=None, spacing=None, guidance=2.0)
  with pytest.raises(ValueError, match="`class_label` needs a class-conditional model"):
    class_labels(build(config, model), 4, 3)
  np.testing.assert_array_equal(class_labels(build(config, model), 3, None), [0, 0, 0])


def test_class_conditional_samples_for_data_augmentation(digits_run, tmp_path):
  folders = tmp_path / "augmented"
  assert cli.main(["sample", "--workdir", str(digits_run), "--num", "20", "--out",
                   str(folders), "--layout", "folders", "--sampler", "dpm++", "--steps", "5"]) == 0
  assert sorted(os.listdir(folders)) == [str(k) for k in range(10)]
  read_back = ImageFolderSource(str(folders), 8, 1)
  assert len(read_back) == 20 and read_back.num_classes == 10
  out = tmp_path / "threes.npz"
  assert cli.main(["sample", "--workdir", str(digits_run), "--num", "8", "--out", str(out),
                   "--class", "3", "--guidance", "2.0", "--sampler", "ddim", "--steps", "5"]) == 0
  data = np.load(out)
  assert data["arr_0"].shape == (8, 8, 8, 1) and np.all(data["labels"] == 3)


def Spy(model):
  """The run's Denoiser, recording the class labels every call receives (None: no labels)
  in `.seen`."""
  seen = []

  def apply_fn(variables, x, t, y, cond, train, rng):
    if y is not None:
      jax.debug.callback(lambda y: seen.append(set(np.asarray(y).tolist())), y)
    else:
      jax.debug.callback(lambda: seen.append(None))
    return model.apply_fn(variables, x, t, y, cond, train, rng)

  spy = dataclasses.replace(model, apply_fn=apply_fn)
  object.__setattr__(spy, "seen", seen)
  return spy


def test_applications_condition_on_the_null_class_or_the_given_one(digits_run, tmp_path):
  from diffusion.applications import anomaly_scores, inpaint
  config, model, params, _ = load_run(str(digits_run))
  mesh = make_mesh()
  params, key = replicate(params, mesh), base_key(0, "sample")
  images = DigitsSource(split="test").images[:4]
  mask = np.ones((8, 8), bool)
  mask[:, 4:] = False
  calls = {
      "denoise": lambda m, **kw: denoise(build(config, m), params, images, 0.2, mesh, key, steps=3,
                                         **kw),
      "anomaly": lambda m, **kw: anomaly_scores(build(config, m), params, images, mesh, key,
                                                at_step=5,
                                                sampler="ddim", steps=3, **kw),
      "inpaint": lambda m, **kw: inpaint(build(config, m), params, images[0], mask, mesh, key,
                                         steps=4,
                                         jump_length=2, resamplings=2, **kw),
  }
  for name, call in calls.items():
    for class_label, expected in ((None, {10}), (3, {3})):  # 10: the null class
      spy = Spy(model)
      call(spy, class_label=class_label)
      assert spy.seen and all(seen == expected for seen in spy.seen), (name, class_label, spy.seen)
  # Without label dropout there is no null class: a class must be named.
  strict = config.copy_and_resolve_references()
  strict.train.label_dropout = 0.0
  with pytest.raises(ValueError, match="trained without label dropout.*pass `class_label` C"):
    denoise(build(strict, model), params, images, 0.2, mesh, key)
  with pytest.raises(ValueError, match=r"`class_label` must lie in \[0, 10\)"):
    calls["anomaly"](model, class_label=10)
  with pytest.raises(ValueError, match=r"`at_step` must lie in \[0, 200\)"):
    anomaly_scores(build(config, model), params, images, mesh, key, at_step=200)
  # The commands take --class too.
  save(tmp_path / "in.png", images[0])
  save(tmp_path / "mask.png", (mask * 255).astype(np.uint8)[..., None])
  assert cli.main(["inpaint", "--workdir", str(digits_run), "--image", str(tmp_path / "in.png"),
                   "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png"),
                   "--steps", "4", "--jump-length", "2", "--resamplings", "2", "--class", "7"]) == 0
  assert cli.main(["denoise", "--workdir", str(digits_run), "--image", str(tmp_path / "in.png"),
                   "--sigma", "0.2", "--out", str(tmp_path / "d.png"), "--steps", "3"]) == 0
