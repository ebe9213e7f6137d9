"""A workdir in Google Cloud Storage, end to end against a local GCS emulator: train, resume and
sample with gs:// paths, and nothing lands on the local disk. Paths with no backend are refused."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from http import HTTPStatus

import numpy as np
import pytest
from etils import epath

from _tiny import CONFIGS, tiny_overrides
from diffusion import buckets, cli, paths


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


def _closed_port() -> int:
  """A localhost port that nothing listens on (bound, then freed)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_an_unreachable_store_is_one_line_in_seconds(tmp_path):
  """No network (here: the emulator's address with nothing listening) fails at once, in a line
  naming the path, instead of minutes of gcsfs's retries and their tracebacks."""
  env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://localhost:{_closed_port()}"}
  command = [sys.executable, "-m", "diffusion", "train", "--config",
             os.path.join(CONFIGS, "digits.py"), "--workdir", "gs://bucket/run"]
  start = time.monotonic()
  run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and time.monotonic() - start < 30, run.stderr[-2000:]
  assert run.stderr.splitlines() == [
      f"ddpm train: error: --workdir 'gs://bucket/run': cannot reach localhost:"
      f"{env['STORAGE_EMULATOR_HOST'].rsplit(':', 1)[1]} (no network? Connection refused)"]
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [
    ["train", "--config", os.path.join(CONFIGS, "digits.py"), "--workdir", "gs://nobucket/run"],
    ["sample", "--workdir", "gs://nobucket/run", "--num", "8", "--out", "samples.npz"],
    ["evaluate", "--samples", "gs://nobucket/samples.npz"],
])
def test_a_missing_bucket_is_one_line(gcs, tmp_path, monkeypatch, capsys, argv):
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv) == 2
  path = next(a for a in argv if "nobucket" in a)
  flag = argv[argv.index(path) - 1]
  assert capsys.readouterr().err.splitlines() == [
      f"ddpm {argv[0]}: error: {flag} {path!r}: no such bucket 'nobucket'"]
  assert os.listdir(tmp_path) == []


def test_resolve_probes_each_bucket_once(gcs, monkeypatch):
  """A ValueError naming the argument for a store that cannot be reached; a bucket that answered
  is not probed again (resolve runs for every path)."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{_closed_port()}")
  with pytest.raises(ValueError, match=r"^--out 'gs://bucket/s\.npz': cannot reach localhost:\d+ "
                                       r"\(no network\? Connection refused\)$"):
    paths.resolve("gs://bucket/s.npz", "--out")
  monkeypatch.undo()
  assert paths.resolve("gs://bucket/a", "--out") == epath.Path("gs://bucket/a")
  monkeypatch.setattr(buckets, "_probe", lambda *args: pytest.fail("probed twice"))
  assert paths.resolve("gs://bucket/b/c.npz", "--out") == epath.Path("gs://bucket/b/c.npz")
  with pytest.raises(ValueError, match=r"^--out 'gs:///x': names no bucket"):
    paths.resolve("gs:///x", "--out")


@pytest.mark.parametrize("error, cause", [
    (FileNotFoundError("b/{}/o"), "no such bucket 'b'"),
    (OSError("Forbidden: b/b/o\nme@x does not have storage.objects.list access"),
     "no credentials or no permission for bucket 'b' (Forbidden: b/b/o me@x does not have "
     "storage.objects.list access; gcloud auth application-default login, or set "
     "GOOGLE_APPLICATION_CREDENTIALS)"),
    (PermissionError("Access Denied"), "no credentials or no permission for bucket 'b'"),
    (TimeoutError(), "no answer from storage.googleapis.com:443 within 30 s"),
    (ConnectionResetError(104, "Connection reset by peer"),
     "cannot reach storage.googleapis.com:443 (no network? [Errno 104] Connection reset by peer)"),
    (RuntimeError("odd"), "the store refused bucket 'b': RuntimeError: odd"),
])
def test_refusals_name_the_cause(error, cause):
  assert buckets.refusal(error, "gs", "b", "storage.googleapis.com:443").startswith(cause)


def test_refusal_names_missing_credentials():
  from gcsfs.retry import HttpError
  from google.auth.exceptions import RefreshError
  for error in (HttpError({"code": 401, "message": "Anonymous caller does not have access"}),
                RefreshError("invalid_grant: Token has been expired or revoked.")):
    assert buckets.refusal(error, "gs", "b", None).startswith(
        "no credentials or no permission for bucket 'b' (")
