"""A workdir in Google Cloud Storage, end to end against a local GCS emulator: train, resume and
sample with gs:// paths, and nothing lands on the local disk. Paths with no backend are refused."""

import json
import logging
import os
import subprocess
import sys
from http import HTTPStatus

import numpy as np
import pytest
from etils import epath

from _tiny import CONFIGS, tiny_overrides
from diffusion import cli, paths


def _emulator_with_generation_headers():
  """gcp-storage-emulator's object reads lack the x-goog-generation header that real GCS sends
  and TensorStore's conditional writes need ("Malformed StorageGeneration"): add it. Its
  tracebacks for clients that hang up early (gcsfs races requests) are hidden."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  def with_generation(handler):
    def handle(request, response, storage, *args, **kwargs):
      handler(request, response, storage, *args, **kwargs)
      if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        try:
          obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except objects.NotFound:
          return
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj.get("metageneration", "1")
    return handle

  reads = (objects.get, objects.download)
  server.HANDLERS = tuple(
      (pattern, {m: with_generation(h) if h in reads else h for m, h in methods.items()})
      for pattern, methods in server.HANDLERS)
  server.server.HTTPServer.handle_error = lambda *args: None


@pytest.fixture(scope="module")
def gcs():
  """A GCS emulator in this process (a thread) with a bucket "bucket"; the environment that
  points gcsfs, google-cloud-storage (Orbax's bucket checks) and TensorStore at it."""
  from gcp_storage_emulator.server import create_server
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  _emulator_with_generation_headers()
  server = create_server("localhost", 0, in_memory=True, default_bucket="bucket")
  server._api.daemon = True
  server.start()
  url = f"http://localhost:{server._api._httpd.server_address[1]}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield
  server.stop()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def ddpm(capsys, *argv):
  assert cli.main(list(argv)) == 0
  err = capsys.readouterr().err
  assert "Traceback" not in err, err[-3000:]


def test_train_resume_and_sample_in_a_bucket(gcs, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # where a gs: folder would appear
  train = ["train", "--config", os.path.join(CONFIGS, "digits.py"), "--workdir", "gs://bucket/run"]
  ddpm(capsys, *train, *tiny_overrides(num_steps=4, checkpoint_every=2))
  run = epath.Path("gs://bucket/run")
  assert (run / "checkpoints" / "4" / "commit_success.txt").exists()
  assert (run / "samples" / "step_00000004.png").exists()
  assert any("tfevents" in p.name for p in (run / "tb").iterdir())
  assert not (run / "lock.json").exists()  # released

  ddpm(capsys, *train, *tiny_overrides(num_steps=6, checkpoint_every=2))
  lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [2, 4, 6]  # the resumed run appended to the file

  ddpm(capsys, "sample", "--workdir", "gs://bucket/run", "--num", "8", "--out",
       "gs://bucket/out/samples.npz", "--sampler", "ddim", "--steps", "3")
  samples = paths.load_npz(epath.Path("gs://bucket/out/samples.npz"))["arr_0"]
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8
  assert (epath.Path("gs://bucket/out/samples.png")).exists()
  assert os.listdir(tmp_path) == []  # no local folder named gs: (or anything else)

  # A compilation cache in the bucket (a pod's hosts and restarts share it): the second
  # process loads the sampler that the first compiled.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(DDPM_COMPILATION_CACHE="gs://bucket/xla", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_DEBUG_LOG_MODULES="jax._src.compiler")
  command = [sys.executable, "-m", "diffusion", "sample", "--workdir", "gs://bucket/run", "--num",
             "8", "--out", "gs://bucket/out/cached.npz", "--sampler", "ddim", "--steps", "3"]
  runs = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
          for _ in range(2)]
  assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
  hit = "Persistent compilation cache hit for 'jit_device_sample'"
  assert hit not in runs[0].stderr and hit in runs[1].stderr
  assert any(p.name.endswith("-cache") for p in epath.Path("gs://bucket/xla").iterdir())
  assert os.listdir(tmp_path) == []


def test_paths_no_backend_serves_are_refused(tmp_path, capsys, monkeypatch):
  assert cli.main(["train", "--config", os.path.join(CONFIGS, "digits.py"), "--workdir",
                   "foo://bucket/run", *tiny_overrides()]) == 2
  assert "--workdir 'foo://bucket/run': no storage backend serves foo://" in capsys.readouterr().err
  real = paths.importlib.util.find_spec
  monkeypatch.setattr(paths.importlib.util, "find_spec",
                      lambda name: None if name in ("gcsfs", "tensorflow") else real(name))
  with pytest.raises(ValueError, match=r"--out 'gs://b/s.npz': reading and writing gs:// needs the "
                                       r"gcsfs package \(pip install gcsfs\)"):
    paths.resolve("gs://b/s.npz", "--out")
  assert not os.path.exists("gs:")
