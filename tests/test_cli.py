"""The `ddpm` command."""

import os
import subprocess
import sys

import numpy as np
import pytest

import diffusion
from diffusion import cli


def test_schedule_prints_the_tables(capsys):
  assert cli.main(["schedule", "linear", "--steps", "10", "--rows", "3"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("linear schedule, T = 10")
  rows = [line.split() for line in lines[2:]]
  assert [int(r[0]) for r in rows] == [0, 4, 9]
  betas = diffusion.linear_betas(10)
  np.testing.assert_allclose([float(r[1]) for r in rows], betas[[0, 4, 9]], rtol=1e-4)
  np.testing.assert_allclose([float(r[2]) for r in rows],
                             np.cumprod(1 - betas)[[0, 4, 9]], rtol=1e-4)


def test_python_dash_m_and_bad_arguments():
  run = lambda *args: subprocess.run([sys.executable, "-m", "diffusion", *args],
                                     capture_output=True, text=True)
  ok = run("schedule", "cosine", "--steps", "5")
  assert ok.returncode == 0 and "cosine schedule, T = 5" in ok.stdout
  bad = run("schedule", "cosine", "--steps", "0")
  assert bad.returncode == 2 and "--steps and --rows must be positive" in bad.stderr
  unknown = run("schedule", "exp")
  assert unknown.returncode == 2 and "invalid choice: 'exp'" in unknown.stderr


def test_a_compilation_cache_that_cannot_serve_is_named(tmp_path, monkeypatch, capsys):
  """DDPM_COMPILATION_CACHE is checked before anything runs (the tests' own cache, JAX's
  setting, is put aside meanwhile): one line naming it, exit status 2."""
  import jax
  from diffusion import distributed
  (tmp_path / "file").write_text("")
  saved = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    for value, message in (("foo://x", "DDPM_COMPILATION_CACHE 'foo://x': no storage backend "
                            "serves foo://"),
                           (str(tmp_path / "file"), "is a file, not a folder")):
      monkeypatch.setenv("DDPM_COMPILATION_CACHE", value)
      assert cli.main(["sample", "--workdir", str(tmp_path), "--num", "1", "--out", "o.npz"]) == 2
      assert message in capsys.readouterr().err
      assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.setenv("DDPM_COMPILATION_CACHE", "off")
    assert distributed.use_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update("jax_compilation_cache_dir", saved)


DIGITS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "configs", "digits.py")


@pytest.mark.parametrize("argv, message", [
    (["sample", "--workdir", "{run}", "--num", "4", "--out", "{run}"],
     "--out '{run}' is a folder; give a file name"),
    (["sample", "--workdir", "{run}", "--num", "4", "--out", "{file}/s.npz"],
     "--out '{file}/s.npz': '{file}' is a file, not a folder"),
    (["train", "--config", DIGITS, "--workdir", "{file}"], "--workdir '{file}' is a file, not a folder"),
    (["distill", "--config", DIGITS, "--workdir", "{run}", "--out", "{file}", "--method",
      "progressive"], "--out '{file}' is a file, not a folder"),
    (["evaluate", "--workdir", "{run}", "--bpd", "--samples", "{run}/none.npz", "--digits"],
     "--samples '{run}/none.npz' does not exist"),
    (["evaluate", "--samples", "{file}", "--digits", "--out", "{run}"], "--out '{run}' is a folder"),
    (["inpaint", "--workdir", "{run}", "--image", "{run}/none.png", "--mask", "{file}", "--out",
      "o.png"], "--image '{run}/none.png' does not exist"),
    (["bench-data", "--config", DIGITS, "--json", "{run}"], "--json '{run}' is a folder"),
    (["prepare-data", "--config", DIGITS, "--out", "{file}"], "--out '{file}' is a file, not a folder"),
    (["sample", "--workdir", "{run}", "--num", "4", "--out", "{run}/new/s.npz"],
     "--out '{run}/new/s.npz': the folder '{run}' takes no new file (Read-only file system)"),
    # Seeds that jax.random.key cannot take (an OverflowError traceback, after train had taken
    # the workdir and made checkpoints/).
    (["train", "--config", DIGITS, "--workdir", "{run}", "--config.seed=18446744073709551615"],
     "config.seed must be an int in [0, 2**63 - 1]"),
    (["sample", "--workdir", "{run}", "--num", "4", "--out", "s.npz", "--seed", str(2 ** 63)],
     f"argument --seed: must be an int in [0, 2**63 - 1]; got '{2 ** 63}'"),
    (["denoise", "--workdir", "{run}", "--image", "{file}", "--sigma", "0.1", "--out", "o.png",
      "--seed", "-1"],
     "argument --seed: must be an int in [0, 2**63 - 1]; got '-1'"),
])
def test_paths_that_cannot_serve_are_named_before_any_work(argv, message, tmp_path, monkeypatch,
                                                            capsys):
  """Inputs that do not exist, outputs where a folder or file is in the way or a folder that
  takes no file (read-only: simulated, as root's permissions would not show it): one line,
  before the run is even opened ({run} is an empty folder, no run)."""
  import errno
  import tempfile
  run, file = tmp_path / "run", tmp_path / "file"
  run.mkdir()
  file.write_text("")
  fill = lambda text: text.format(run=run, file=file)

  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

  if "takes no new file" in message:
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
  try:
    status = cli.main([fill(a) for a in argv])
  except SystemExit as e:  # argparse's errors
    status = e.code
  assert status == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"ddpm {argv[0]}: error: {fill(message)}"] or (
      len(err) == 1 and fill(message) in err[0]), err
  assert sorted(os.listdir(tmp_path)) == ["file", "run"] and not os.listdir(run)


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_usage(argv, capsys):
  with pytest.raises(SystemExit):
    cli.main(argv)
  captured = capsys.readouterr()
  assert "usage: ddpm" in captured.err + captured.out


def test_bench_unet_reports_throughput_and_flops(tmp_path, capsys):
  config = tmp_path / "tiny.py"
  config.write_text(
      "import ml_collections\n"
      "def get_config():\n"
      "  return ml_collections.ConfigDict({'data': {'image_size': 8, 'channels': 1},\n"
      "      'model': {'ch': 32, 'ch_mult': (1, 2), 'num_res_blocks': 1,\n"
      "                'attn_resolutions': (4,), 'num_groups': 8, 'dropout': 0.1}})\n")
  out = tmp_path / "bench.json"
  assert cli.main(["bench-unet", "--config", str(config), "--batch", "2", "--steps", "1",
                   "--json", str(out), "--config.data.channels=3"]) == 0  # overrides, as train
  assert "train_step" in capsys.readouterr().out
  import json
  result = json.loads(out.read_text())
  assert result["batch"] == 2 and result["shape"] == [8, 8, 3]
  for name in ("forward", "train_step"):
    assert result[name]["images_per_s"] > 0 and result[name]["gflops_per_image"] > 0
  # The backward pass costs about twice the forward.
  ratio = result["train_step"]["gflops_per_image"] / result["forward"]["gflops_per_image"]
  assert 2 < ratio < 4
  assert cli.main(["bench", "--config", str(config), "--no-torch", "--peak-tflops", "-1"]) == 2
  assert "--peak-tflops must be > 0; got -1.0" in capsys.readouterr().err


def test_bench_sampling_times_every_sampler(tmp_path, capsys):
  out = tmp_path / "sampling.json"
  digits = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "configs", "digits.py")
  assert cli.main(["bench-sampling", "--config", digits, "--batch", "8", "--steps", "2",
                   "--samplers", "ddpm,dpm++", "--json", str(out)]) == 0
  assert "samples/s" in capsys.readouterr().out
  import json
  result = json.loads(out.read_text())
  assert set(result["samplers"]) == {"ddpm", "dpm++"} and result["devices"] == 8
  for figures in result["samplers"].values():
    assert figures["steps"] == 2 and figures["samples_per_s"] > 0
  assert cli.main(["bench-sampling", "--config", digits, "--samplers", "euler"]) == 2
  assert "--samplers must be one of" in capsys.readouterr().err


def test_bench_against_pytorch(tmp_path, capsys):
  """A class-conditional network with learned variances: both sides take labels and read ε
  from the first channels."""
  digits = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                                        "configs", "digits.py"))
  config = tmp_path / "small.py"
  config.write_text(
      "from diffusion.config import load_config\n"
      "def get_config():\n"
      f"  config = load_config({digits!r})\n"
      "  config.model.ch, config.model.num_groups, config.diffusion.num_steps = 16, 4, 20\n"
      "  config.model.learned_variance, config.diffusion.variance = True, 'learned_range'\n"
      "  config.model.num_classes = 3\n"
      "  return config\n")
  out = tmp_path / "bench.json"
  assert cli.main(["bench", "--config", str(config), "--batch", "8", "--train-steps", "1",
                   "--samplers", "ddim,dpm++", "--sample-steps", "3", "--peak-tflops", "1",
                   "--layers", "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "train images/s" in printed and "PyTorch" in printed and "model FLOP utilisation" in printed
  import json
  result = json.loads(out.read_text())
  assert result["train"]["images_per_s"] > 0 and 0 < result["train"]["mfu"] < 1
  assert result["train"]["gflops_per_image"] > 0 and result["train"]["xla_estimate_gib"] > 0
  assert set(result["torch"]["samplers"]) == {"ddim", "dpm++"}
  assert all(r > 0 for r in result["ratio"].values())
  assert result["torch"]["samplers"]["ddim"]["steps"] == 3
  # Layer timings at both levels of the (1, 2) network: 8×8×16 and 4×4×32.
  assert {tuple(r["shape"]) for r in result["layers"]} == {(8, 8, 8, 16), (8, 4, 4, 32)}
  assert all(r["jax_ms"] > 0 and r["torch_ms"] > 0 for r in result["layers"])
