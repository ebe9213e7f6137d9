"""The data pipeline at scale: ArrayRecord shards (`ddpm prepare-data`), batches read at once,
`ddpm bench-data`, and the launch scripts' dry runs."""

import json
import os
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from _tiny import CONFIGS
from diffusion import cli
from diffusion.config import data_spec, load_config
from diffusion.data import DigitsSource, ImageFolderSource, Loader
from diffusion.data.arrayrecord import ArrayRecordSource, write
from diffusion.data.loader import collate

REPO = os.path.join(os.path.dirname(__file__), os.pardir)
DIGITS = os.path.join(CONFIGS, "digits.py")


def image_folder(path, n=40, size=(9, 11)):
  rng = np.random.default_rng(0)
  path.mkdir()
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(path / f"{i:03d}.png")
  return path


def test_prepare_data_writes_the_examples_of_the_source(tmp_path, capsys):
  folder = image_folder(tmp_path / "images")
  out = tmp_path / "shards"
  assert cli.main(["prepare-data", "--config", DIGITS, "--out", str(out), "--shards", "3",
                   "--config.data.name=folder", f"--config.data.path={folder}",
                   "--config.data.channels=3"]) == 0
  assert "40 examples in 3 shards" in capsys.readouterr().out
  images, records = ImageFolderSource(str(folder), 8, 3), ArrayRecordSource(str(out))
  assert len(records) == 40 and records.num_classes == 0
  for i in (0, 17, 39):
    np.testing.assert_array_equal(records[i]["x"], images[i]["x"])
  batch = records.read_batch([39, 0, 17])
  np.testing.assert_array_equal(batch["x"], np.stack([images[i]["x"] for i in (39, 0, 17)]))
  # Labels, and data of any shape and dtype (float point sets), written as they come.
  digits = DigitsSource()
  write(digits, str(tmp_path / "digits"), shards=2, progress=False)
  again = ArrayRecordSource(str(tmp_path / "digits"))
  assert again.num_classes == 10 and again[1234]["label"] == digits[1234]["label"]
  points = {"x": np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32), "label": 0}
  write([points] * 4, str(tmp_path / "points"), shards=1, progress=False)
  np.testing.assert_array_equal(ArrayRecordSource(str(tmp_path / "points"))[3]["x"], points["x"])
  # The loader reads the shards a batch at once, as the examples one by one would give them.
  batch = next(Loader(again, 16, seed=0).batches(start=1490))
  order = [np.random.default_rng([0, e]).permutation(1500)[s % 1500]
           for e, s in ((0, 1490 + i) if 1490 + i < 1500 else (1, 1490 + i) for i in range(16))]
  np.testing.assert_array_equal(batch["x"], digits.images[order])
  np.testing.assert_array_equal(batch["label"], digits.labels[order])


def test_prepare_data_on_a_full_disk_says_so_in_one_line_and_leaves_no_shard(
    tmp_path, capsys, monkeypatch):
  """ArrayRecord's writer raises RuntimeError("write() failed: No space left on device") when
  the disk fills (a traceback: the command caught OSError only): one line under a closed
  progress bar, exit 2, no partial shard; the same command then succeeds."""
  from array_record.python import array_record_module
  real, written = array_record_module.ArrayRecordWriter, []

  class FillsUp:
    def __init__(self, *args):
      self.writer = real(*args)

    def write(self, record):
      if len(written) == 25:
        raise RuntimeError("write() failed: No space left on device")
      written.append(record)
      self.writer.write(record)

    def close(self):
      self.writer.close()

  folder, out = image_folder(tmp_path / "images"), tmp_path / "shards"
  command = ["prepare-data", "--config", DIGITS, "--out", str(out), "--shards", "3",
             "--config.data.name=folder", f"--config.data.path={folder}"]
  monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FillsUp)
  assert cli.main(command) == 2
  lines = capsys.readouterr().err.split("\n")
  assert lines[-1] == "" and lines[-2] == (
      f"ddpm prepare-data: error: --out {str(out)!r}: the disk is full (write() failed: No space "
      "left on device); the partial shards were removed"), lines
  assert not out.exists()
  monkeypatch.undo()
  assert cli.main(command) == 0 and len(ArrayRecordSource(str(out))) == 40


def test_damaged_or_missing_shards_are_named(tmp_path, capsys):
  write(DigitsSource(), str(tmp_path / "d"), shards=3, progress=False)
  with pytest.raises(ValueError, match="holds a dataset already"):
    write(DigitsSource(), str(tmp_path / "d"), shards=3, progress=False)
  shard = tmp_path / "d" / "data-00001-of-00003.array_record"
  content = shard.read_bytes()
  shard.write_bytes(content[:-100])
  with pytest.raises(ValueError, match=r"shard data-00001-of-00003.array_record is damaged"):
    ArrayRecordSource(str(tmp_path / "d"))
  shard.write_bytes(content[:1000] + b"\0" * (len(content) - 1000))
  with pytest.raises(ValueError, match=r"shard data-00001-of-00003.array_record is damaged"):
    ArrayRecordSource(str(tmp_path / "d"))
  shard.unlink()
  assert cli.main(["train", "--config", DIGITS, "--workdir", str(tmp_path / "run"),
                   "--config.data.name=arrayrecord", f"--config.data.path={tmp_path / 'd'}"]) == 2
  assert re.search(r"shard data-00001-of-00003.array_record is missing$",
                   capsys.readouterr().err.strip())
  with pytest.raises(FileNotFoundError, match="holds no dataset.json"):
    ArrayRecordSource(str(tmp_path))
  meta = tmp_path / "d" / "dataset.json"
  meta.write_text(meta.read_text()[:5])
  with pytest.raises(ValueError, match="dataset.json is not valid JSON .*run `ddpm prepare-data`"):
    ArrayRecordSource(str(tmp_path / "d"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


class PerExample:
  """A source without read_batch: the loader reads it example by example."""

  def __init__(self, source):
    self.source, self.num_classes = source, source.num_classes

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return self.source[i]


def test_batches_read_at_once_equal_batches_read_example_by_example():
  config = load_config(DIGITS)
  spec = data_spec(config)
  digits = DigitsSource()
  at_once = Loader(digits, 64, seed=2, random_flip=True, spec=spec).batches(start=1480)
  one_by_one = Loader(PerExample(digits), 64, seed=2, random_flip=True, spec=spec)
  for n in range(2):  # across the end of the epoch
    a = next(at_once)
    b = collate([one_by_one.example(1480 + 64 * n + i) for i in range(64)])
    assert a["x"].dtype == b["x"].dtype == np.uint8
    for key in ("x", "label"):
      np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["x"], np.stack([digits[0]["x"]] * 64))


def test_bench_data_reports_each_worker_count(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert cli.main(["bench-data", "--config", DIGITS, "--workers", "0,1", "--batches", "3",
                   "--json", str(out), "--step-images-per-s", "1e9"]) == 0
  table = capsys.readouterr().out
  assert "DigitsSource: 1,500 examples, batch 64" in table
  assert "the data pipeline bounds training" in table
  result = json.loads(out.read_text())
  assert [r["workers"] for r in result["runs"]] == [0, 1]
  assert all(r["images_per_s"] > 0 for r in result["runs"])
  assert cli.main(["bench-data", "--config", DIGITS, "--workers", "one"]) == 2
  assert "--workers must be comma-separated ints" in capsys.readouterr().err


def dry_run(*argv, **env):
  run = subprocess.run(["bash", *argv], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, **env))
  assert run.returncode == 0, run.stderr
  import shlex
  return [shlex.split(line) for line in run.stdout.splitlines()]


def test_launchers_print_what_they_would_run():
  """Pods and clusters cannot be reached here: the launchers' dry runs show their commands."""
  lines = dry_run(os.path.join(REPO, "launch", "local.sh"), "--dry-run", "3", "ddpm", "train",
                  "--workdir", "runs/a b", DDPM_PORT="23456")
  assert [line[:5] for line in lines] == [
      ["env", "DDPM_COORDINATOR_ADDRESS=localhost:23456", "DDPM_NUM_PROCESSES=3",
       f"DDPM_PROCESS_ID={i}", "JAX_PLATFORMS=cpu"] for i in range(3)]
  assert all(line[5:] == ["ddpm", "train", "--workdir", "runs/a b"] for line in lines)

  copy, start = dry_run(os.path.join(REPO, "launch", "tpu_pod.sh"), "--dry-run", "tpu-1",
                        "us-central2-b", "experiments/configs/cifar10.py", "gs://bucket/run",
                        "--config.mesh.fsdp=4")
  assert copy[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
  assert "--worker=all" in copy and "tpu-1:ddpm-jax" in copy
  assert start[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in start
  remote = next(a for a in start if a.startswith("--command="))[len("--command="):]
  assert "pip install -q '.[gcs]'" in remote  # a bucket workdir needs the gcs extra
  assert remote.endswith("--workdir gs://bucket/run --config.mesh.fsdp=4 ")
  assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0  # it parses

  lines = dry_run(os.path.join(REPO, "launch", "slurm.sbatch"), "--dry-run",
                  "--config.model.dtype=bfloat16", CONFIG="c.py", WORKDIR="/shared/run")
  assert ["#SBATCH", "--signal=TERM@120"] in lines
  assert lines[-1] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "diffusion", "train",
                       "--config", "c.py", "--workdir", "/shared/run",
                       "--config.model.dtype=bfloat16"]


def test_the_package_imports_without_grain_and_array_record():
  """An accelerator machine that lacks them still runs `ddpm bench` and training's other parts:
  Grain and ArrayRecord are imported only when the loader or the shards are used."""
  code = ("import sys; sys.modules['grain'] = None; sys.modules['array_record'] = None\n"
          "import diffusion, diffusion.benchmarks.timing, diffusion.cli, diffusion.training\n"
          "import diffusion.data.arrayrecord, diffusion.benchmarks.throughput\n"
          "from diffusion.data import DigitsSource, Loader\n"
          "Loader(DigitsSource(), 8, seed=0).example(3)\n")
  run = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
