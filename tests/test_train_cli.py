"""`ddpm train` and `ddpm sample` end to end: data sources, resumption, several processes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from _tiny import CONFIGS, tiny_overrides
from diffusion import cli
from diffusion.sampling import make_sampler
from diffusion.training import Checkpoints

DIGITS = os.path.join(CONFIGS, "digits.py")
REPO = os.path.join(os.path.dirname(__file__), os.pardir)


def train(workdir, *overrides):
  """The tiny run with `overrides` in place of its own values of the same keys (ml_collections
  joins two overrides of one tuple: (1,) then (1,2) gives (1, 1, 2))."""
  keys = {o.split("=")[0] for o in overrides}
  tiny = [o for o in tiny_overrides() if o.split("=")[0] not in keys]
  return cli.main(["train", "--config", DIGITS, "--workdir", str(workdir), *tiny, *overrides])


def final_state(workdir, parts=("params",)):
  checkpoints = Checkpoints(str(workdir), read_only=True)
  step = checkpoints.latest_step()
  state = {part: jax.device_get(checkpoints.restore_part(part, step)) for part in parts}
  checkpoints.manager.close()
  return step, state


def read_events(path):
  """{step: {tag: value}} of a TensorBoard event file, read with tensorboardX's CRC-32C and
  protocol buffers (an implementation independent of the writer's): every record's two
  checksums are checked, and the first event must name the file version."""
  import struct
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto.event_pb2 import Event
  masked = lambda data: (((crc32c(data) >> 15) | (crc32c(data) << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  data, records = path.read_bytes(), []
  while data:
    (length,), (length_crc,) = struct.unpack("<Q", data[:8]), struct.unpack("<I", data[8:12])
    record, (record_crc,) = data[12:12 + length], struct.unpack("<I", data[12 + length:16 + length])
    assert length_crc == masked(data[:8]) and record_crc == masked(record)
    records.append(Event.FromString(record))
    data = data[16 + length:]
  assert records[0].file_version == "brain.Event:2"
  return {e.step: {v.tag: v.simple_value for v in e.summary.value} for e in records[1:]}


def test_event_files_hold_any_step_and_scalar(tmp_path):
  from diffusion.training.events import EventWriter
  writer = EventWriter(tmp_path)
  values = {0: {"loss": 0.5}, 2 ** 40: {"a": -1e30, "b/c": 3.25}, -3: {"nan": float("nan")}}
  for step, scalars in values.items():
    writer.scalars(step, scalars)
  writer.close()
  (name,) = os.listdir(tmp_path)
  read = read_events(tmp_path / name)
  assert read.keys() == values.keys() and read[0] == {"loss": 0.5}
  assert read[2 ** 40] == {"a": np.float32(-1e30), "b/c": 3.25} and np.isnan(read[-3]["nan"])


def test_train_on_digits_then_sample(tmp_path, capsys, monkeypatch):
  from diffusion.training import loop
  grids = []
  monkeypatch.setattr(loop, "make_sampler", lambda *a, **kw: grids.append(kw) or
                      make_sampler(*a, **kw))
  workdir = tmp_path / "run"
  assert train(workdir, "--config.train.sample_sampler=ddim",
               "--config.train.sample_steps=3") == 0
  assert grids == [{"sampler": "ddim", "steps": 3}]  # the grids' sampler is the config's
  assert "step 6 of 6" in capsys.readouterr().out
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [2, 4, 6]
  assert {"loss", "mse", "grad_norm", "lr", "skipped", "images_per_s"} <= set(lines[0])
  (events,) = os.listdir(workdir / "tb")
  assert events.startswith("events.out.tfevents.")
  scalars = read_events(workdir / "tb" / events)
  assert sorted(scalars) == [2, 4, 6]
  for line in lines:  # TensorBoard holds what metrics.jsonl holds, as float32
    assert scalars[line["step"]].keys() == line.keys() - {"step"}
    for name, value in scalars[line["step"]].items():
      assert value == np.float32(line[name]), name
  assert os.listdir(workdir / "samples") == ["step_00000006.png"]
  assert Image.open(workdir / "samples" / "step_00000006.png").size[0] > 8

  out = tmp_path / "samples.npz"
  assert cli.main(["sample", "--workdir", str(workdir), "--num", "12", "--out", str(out),
                   "--batch", "8", "--seed", "3"]) == 0
  samples = np.load(out)["arr_0"]
  assert samples.shape == (12, 8, 8, 1) and samples.dtype == np.uint8
  assert os.path.exists(tmp_path / "samples.png")
  again = tmp_path / "again.npz"
  cli.main(["sample", "--workdir", str(workdir), "--num", "12", "--out", str(again),
            "--batch", "16", "--seed", "3"])
  np.testing.assert_array_equal(np.load(again)["arr_0"], samples)
  other = tmp_path / "other.npz"
  cli.main(["sample", "--workdir", str(workdir), "--num", "12", "--out", str(other), "--seed", "4"])
  assert not np.array_equal(np.load(other)["arr_0"], samples)

  # Compiled programs outlive the process, in paths.cache_dir()/xla unless JAX's own setting
  # names a folder (test_object_store.py: a second process loads them); DDPM_COMPILATION_CACHE=off.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  command = [sys.executable, "-m", "diffusion", "sample", "--workdir", str(workdir), "--num", "8",
             "--out", str(tmp_path / "cached.npz")]
  for setting, cache in (({}, tmp_path / "cache"), ({"DDPM_COMPILATION_CACHE": "off"},
                                                    tmp_path / "none")):
    run = subprocess.run(command, env={**env, "DDPM_CACHE_DIR": str(cache), **setting},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
  assert any(f.startswith("jit_device_sample") and f.endswith("-cache")
             for f in os.listdir(tmp_path / "cache" / "xla"))
  assert not (tmp_path / "none").exists()


def test_train_on_tfds_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    assert train(tmp_path, "--config.data.name=cifar10", "--config.data.channels=3",
                 "--config.train.num_steps=2") == 0
  step, state = final_state(tmp_path)
  assert step == 2 and state["params"]["conv_in"]["kernel"].shape == (3, 3, 3, 16)


def test_train_on_an_image_folder(tmp_path, monkeypatch, capsys):
  """A start and a resume open only the files of the batches they read (and the first and last
  example, checked before training); broken files are skipped and counted with
  on_error='skip'; a changed folder stops a resume."""
  from diffusion.data import folders
  data = tmp_path / "data"
  data.mkdir()
  rng = np.random.default_rng(0)
  for i in range(300):  # of several sizes: each is resized and cropped to 8 x 8
    Image.fromarray(rng.integers(0, 255, (8 + i % 5, 10, 3), np.uint8)).save(data / f"{i}.png")
  # Break two files of the first batch (the stream's order: seed 0, epoch 0; files sorted),
  # and the first and last by name (the check before training read those outside the skip).
  names, order = sorted(os.listdir(data)), np.random.default_rng([0, 0]).permutation(300)
  for name in (names[order[3]], names[order[9]], names[0], names[-1]):
    (data / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
  opened = []
  monkeypatch.setattr(folders, "open_image", lambda f: opened.append(f) or Image.open(f))
  folder = ["--config.data.name=folder", f"--config.data.path={data}", "--config.data.channels=3",
            "--config.data.on_error=skip"]
  assert train(tmp_path / "run", *folder, "--config.train.num_steps=2") == 0
  assert final_state(tmp_path / "run")[0] == 2
  # 2 batches of 16, 2 more prefetched to the devices, Grain's buffer of 2: far from 300.
  assert 32 <= len(opened) <= 6 * 16 + 2, len(opened)
  metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  assert metrics["data_skipped"] >= 2 and "data_wait_s" in metrics
  assert (tmp_path / "run" / "data_index" / "images.npz").exists()
  opened.clear()
  assert train(tmp_path / "run", *folder, "--config.train.num_steps=4") == 0
  assert 32 <= len(opened) <= 6 * 16 + 2, len(opened)

  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "new.png")
  capsys.readouterr()
  assert train(tmp_path / "run", *folder, "--config.train.num_steps=6") == 2
  assert re.search(r"config.data.path changed since this run indexed it \(1 added \(e.g. "
                   r"new.png\)\)", capsys.readouterr().err)


@pytest.mark.parametrize("overrides, message", [
    (["--config.data.name=folder", "--config.data.path=BROKEN"], "broken image file"),
    (["--config.data.name=no_such_dataset"], "TFDS knows no such dataset"),
    (["--config.data.image_size=7", "--config.model.ch_mult=(1,2)"],
     r"config.data.shape \(7, 7, 1\): each spatial axis must be divisible by 2"),
    (["--config.train.batch_size=12"], "batch_size 12 must be divisible by the 8 devices"),
    (["--config.mesh.fsdp=3"], "config.mesh.fsdp 3 must divide the 8 devices"),
    (["--config.mesh.data=2"], r"config.mesh.data 2 x config.mesh.fsdp 1 must equal the 8 devices"),
    (["--config.diffusion.loss=l1"], "loss must be one of"),
    (["--config.optim.lr=-1"], r"config.optim.lr must be a number > 0; got -1"),
    (["--config.train.ema_decay=1.5"], r"config.train.ema_decay must be a number in \[0, 1\]"),
    (["--config.optim.warmup_steps=-5"], "config.optim.warmup_steps must be an int >= 0"),
    (["--config.optim.grad_clip=-1"], "config.optim.grad_clip must be a number >= 0"),
    (["--config.model.dropout=1.0"], r"config.model.dropout must be a number in \[0, 1\)"),
    (["--config.train.label_dropout=1.5"], r"config.train.label_dropout must be a number in \[0, 1\]"),
    (["--config.train.keep_checkpoints=0"], "config.train.keep_checkpoints must be a positive int"),
    (["--config.diffusion.beta_start=-0.1"], r"config.diffusion.beta_start must be a number in \(0, 1\)"),
    (["--config.diffusion.beta_start=0.05"], "beta_start .* must not exceed config.diffusion.beta_end"),
    (["--config.train.steps_per_dispatch=4"], r"steps_per_dispatch \(4\) must divide"),
    (["--config.model.ch_mult=abc"], r"config.model.ch_mult must be a non-empty sequence of "
                                      r"positive ints, e.g. \(1, 2, 2\); got \('abc',\)"),
    (["--config.model.ch_mult=(1,0)"], r"config.model.ch_mult must be .* got \(1, 0\)"),
    (["--config.model.num_res_blocks=0"], "config.model.num_res_blocks must be a positive int"),
    (["--config.train.sample_steps=5000"],
     r"config.train.sample_steps \(5000\) must not exceed config.diffusion.num_steps \(20\)"),
    (["--config.train.label_dropout=0.1"],
     r"config.train.label_dropout 0.1 .* needs config.model.num_classes > 0"),
    (["--config.model.attn_resolutions=(3,)"],
     r"attn_resolutions \(3,\): no level of this U-Net has size 3 \(its levels' sizes along the "
     r"first spatial axis: \[8\]\)"),
])
def test_bad_runs_stop_before_training(tmp_path, capsys, overrides, message):
  (tmp_path / "good.png").write_bytes(b"")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
  (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  overrides = [o.replace("BROKEN", str(tmp_path)) for o in overrides]
  assert train(tmp_path / "run", *overrides) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_bad_overrides(tmp_path, capsys):
  assert train(tmp_path, "--config.train.batchsize=3") == 2
  assert capsys.readouterr().err == (
      "ddpm train: error: --config.train.batchsize: the config has no key 'batchsize'; did you "
      "mean \"batch_size\" instead of \"batchsize\"?\n")
  assert train(tmp_path, "--seed=3") == 2
  assert capsys.readouterr().err == "ddpm train: error: unrecognized arguments: --seed=3\n"
  assert train(tmp_path, "--config.optim.lr=abc") == 2
  assert capsys.readouterr().err.startswith("ddpm train: error: ")


@pytest.mark.parametrize("text, message", [
    ("def get_config(:\n  pass\n", "line 1: invalid syntax"),
    ("CONFIG = None\n", "defines no get_config() (the function that returns the config)"),
    ("def get_config():\n  return 1 / 0\n", "failed: ZeroDivisionError: division by zero"),
])
def test_broken_config_files_are_one_line(tmp_path, capsys, text, message):
  """One line each, also in a process that loaded a good config before (ml_collections runs
  each file in the module of the one before: without get_config, digits.py's would serve)."""
  from diffusion.cli.common import config_with_overrides
  config_with_overrides(DIGITS, [])
  path = tmp_path / "config.py"
  path.write_text(text)
  assert cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")]) == 2
  assert capsys.readouterr().err == f"ddpm train: error: --config {str(path)!r} {message}\n"


LONG = tiny_overrides(num_steps=24, checkpoint_every=12, log_every=4, num_samples=0)
PARTS = ("params", "ema_params", "opt_state")


def run_ddpm(workdir, *overrides):
  return subprocess.Popen(
      [sys.executable, "-m", "diffusion", "train", "--config", DIGITS, "--workdir", str(workdir),
       *LONG, *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """24 steps in one go, in this process (8 devices)."""
  workdir = tmp_path_factory.mktemp("reference")
  assert cli.main(["train", "--config", DIGITS, "--workdir", str(workdir), *LONG]) == 0
  return (*final_state(workdir, PARTS), losses(workdir))


def losses(workdir):
  return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, reference_run):
  # Killed and resumed mid-epoch with Grain worker processes; the reference reads with threads.
  workers = "--config.data.num_workers=1"
  process = run_ddpm(tmp_path, workers)
  metrics = tmp_path / "metrics.jsonl"
  while not (metrics.exists() and metrics.read_text().strip()):
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 0, err
  assert "preempted: saved step" in err
  stopped_at, _ = final_state(tmp_path)
  assert 0 < stopped_at < 24

  resumed = run_ddpm(tmp_path, workers)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  step, state = final_state(tmp_path, PARTS)
  ref_step, ref_state, _ = reference_run
  assert step == ref_step == 24
  for part in PARTS:
    jax.tree.map(np.testing.assert_array_equal, state[part], ref_state[part])
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert steps[-1] == 24 and steps[0] <= stopped_at


def test_ctrl_c_saves_and_stops_without_a_traceback(tmp_path):
  """Ctrl-C in a terminal (SIGINT to the whole process group) saves the step in flight and
  stops like a preemption, exit 0 and no traceback: the loader's worker processes, which get
  the signal too, stop quietly and release the shared memory of the batches they pass (two
  workers: with one, Grain passes batches by pickling, not in shared memory)."""
  process = subprocess.Popen(
      [sys.executable, "-m", "diffusion", "train", "--config", DIGITS, "--workdir",
       str(tmp_path), *LONG, "--config.data.num_workers=2"], stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  metrics = tmp_path / "metrics.jsonl"
  while not (metrics.exists() and metrics.read_text().strip()):
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGINT)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 0, err
  assert "interrupted: saved step" in err, err
  # The resource tracker (it holds stderr open, so communicate() waits for it) names leaks.
  for unwanted in ("Traceback", "KeyboardInterrupt", "leaked shared_memory"):
    assert unwanted not in err, err
  stopped_at, _ = final_state(tmp_path)
  assert 0 < stopped_at < 24


def test_two_processes_equal_one(tmp_path, reference_run):
  """2 processes of 2 devices, the state split over a (data 2, fsdp 2) mesh, Grain workers:
  the 8-device data-parallel run to float tolerance."""
  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
      "device_count=8", "device_count=2"))
  run = subprocess.run(
      [os.path.join(REPO, "launch", "local.sh"), "2", sys.executable, "-m", "diffusion", "train",
       "--config", DIGITS, "--workdir", str(tmp_path), *LONG, "--config.data.num_workers=1",
       "--config.mesh.fsdp=2", "--config.mesh.min_shard_size=256"],
      capture_output=True, text=True, env=env, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.count("step 24 of 24") == 1  # only process 0 reports
  # Each process logs its own throughput and data wait; the run's metrics name the slowest.
  for p in (0, 1):
    hosts = (tmp_path / "hosts" / f"process_{p}.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in hosts] == [4, 8, 12, 16, 20, 24]
    assert {"images_per_s", "data_wait_s", "data_wait_frac"} <= set(json.loads(hosts[0]))
  last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["slowest_host"] in (0, 1) and last["slowest_host_images_per_s"] > 0
  step, state = final_state(tmp_path, PARTS)
  ref_step, ref_state, ref_losses = reference_run
  assert step == ref_step
  np.testing.assert_allclose(losses(tmp_path), ref_losses, rtol=1e-4)
  # Sums over devices run in another order across processes. Adam turns the
  # rounding noise of gradients that are zero in exact arithmetic (conv biases
  # before a GroupNorm) into steps of size lr, so compare whole trees.
  for part in ("params", "ema_params"):
    diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in
                       zip(jax.tree.leaves(state[part]), jax.tree.leaves(ref_state[part]))))
    norm = np.sqrt(sum(np.sum(b ** 2) for b in jax.tree.leaves(ref_state[part])))
    assert diff < 1e-4 * norm, (part, diff, norm)


def test_a_failed_background_save_stops_the_run(tmp_path, monkeypatch):
  """The error of an asynchronous save surfaces in the run instead of vanishing."""
  import orbax.checkpoint as ocp
  original = ocp.PyTreeCheckpointHandler.async_save
  saves = []

  class Failing:
    def result(self, timeout=None):
      time.sleep(0.2)
      raise OSError("disk full (injected into a background save)")

  async def async_save(self, *args, **kwargs):
    futures = await original(self, *args, **kwargs)
    saves.append(1)
    return list(futures or []) + ([Failing()] if len(saves) == 2 else [])

  monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "async_save", async_save)
  with pytest.raises(OSError, match="disk full"):
    cli.main(["train", "--config", DIGITS, "--workdir", str(tmp_path),
              *tiny_overrides(num_steps=40, checkpoint_every=3)])
  # The failed save never became a checkpoint.
  checkpoints = Checkpoints(str(tmp_path), read_only=True)
  assert 3 not in checkpoints.manager.all_steps()
  checkpoints.manager.close()


class StandIn:
  """A source of one zero example of a config's data (and its conditioning input)."""

  def __init__(self, spec, config):
    self.spec, self.num_classes = spec, config.model.get("num_classes", 0)
    self.cond = bool(config.data.get("condition", ""))

  def __len__(self):
    return 1

  def __getitem__(self, i):
    x = np.zeros(self.spec.shape, self.spec.dtype)
    return {"x": x, "label": 0, **({"cond": x} if self.cond else {})}


@pytest.mark.parametrize("name", ["digits", "digits_hybrid", "cifar10", "celebahq256", "church256",
                                  "bedroom256", "dit256", "sequences", "volumes3d", "protein",
                                  "digits_ct", "cifar10_ct", "digits_ict", "cifar10_ict",
                                  "digits_fm", "digits_edm", "cifar10_fm", "cifar10_edm",
                                  "digits_cond", "digits_cond_guide"])
def test_every_config_is_complete(name):
  from diffusion.config import load_config
  from diffusion.runs import build
  from diffusion.training.loop import check_fit
  config = load_config(os.path.join(CONFIGS, f"{name}.py"))
  for key in ("num_steps", "batch_size", "checkpoint_every", "sample_every"):
    assert config.train[key] > 0
  assert isinstance(config.seed, int)
  run = build(config)  # the config's values, its method's, the network's fit to the data
  check_fit(run, StandIn(run.diffusion.spec, config))
  from diffusion.config import betas_from_config
  from diffusion.schedules import cosine_betas, linear_betas
  d = config.diffusion
  expected = (cosine_betas(d.num_steps) if d.schedule == "cosine" else
              linear_betas(d.num_steps, d.beta_start, d.beta_end))
  np.testing.assert_array_equal(betas_from_config(config), expected)
  with open(os.path.join(CONFIGS, f"{name}.py")) as f:
    assert f"ddpm train --config experiments/configs/{name}.py" in f.read()
