"""benchmarks/accelerator.sh: its parts run in processes of their own and land in one table."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accelerator  # noqa: E402


def test_the_script_runs_parts_in_processes_and_keeps_what_finished(tmp_path):
  """Two parts through the shell script: figures from each part's own process; a part that
  outlives its time is reported as such and the table is still printed."""
  out = tmp_path / "out"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHON=sys.executable)  # this interpreter, activated or not
  run = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--cpu-smoke",
                        "--parts", "matmul,attention", "--out", str(out), "--budget", "100"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  results = json.loads((out / "accelerator.json").read_text())
  matmul = results["parts"]["matmul"]
  assert matmul["n"] == 512 and matmul["tflops_per_s"] > 0 and matmul["platform"] == "cpu"
  attention = results["parts"]["attention"]
  assert attention["1 head of 256, xla"]["ms"] > 0
  assert attention["4 heads of 64, cudnn"] == {"skipped": "cuDNN needs a GPU"}
  assert "bf16 matmul 512^3" in run.stdout and (out / "accelerator.txt").exists()
  assert "attention 4 heads of 64, xla:" in run.stdout


def test_the_table_derives_utilisation_ratios_and_the_50k_extrapolation():
  results = {"date": "d", "smoke": False, "sizes": accelerator.FULL, "parts": {
      "matmul": {"n": 8192, "tflops_per_s": 800.0, "device": "H", "platform": "gpu",
                 "jax": "x", "devices": 1},
      "train": {"bfloat16": {"images_per_s": 4000.0, "tflops_per_s": 200.0, "mfu": 0.2,
                             "peak_gib": 6.0, "compile_s": 60.0}},
      "torch-train": {"bfloat16": {"images_per_s": 1000.0}},
      "sample": {"ddpm": {"steps": 24, "ms_per_network_call": 30.0, "samples_per_s": 1389.0}},
      "torch-sample": {"ddpm": {"ms_per_network_call": 90.0}},
      "train-max": {"512": {"error": "RESOURCE_EXHAUSTED: out of memory"}},
      "inception": {"error": "no result after 90 s (see inception.log)"}}}
  table = accelerator.format_results(results)
  row = next(line for line in table.splitlines() if line.startswith("bfloat16 batch 128"))
  # MFU 20.0 %, 25.0 % of the measured matmul rate, PyTorch ratio 4.00
  assert row.split()[4:7] == ["20.0%", "25.0%", "6.00"] and row.split()[-2] == "4.00", row
  ddpm = next(line for line in table.splitlines() if line.startswith("ddpm"))
  # 50 chains of 1,000 samples x 1,000 calls x 30 ms = 25 minutes; PyTorch 3x slower
  assert "25.0 min" in ddpm and ddpm.split()[-1] == "3.00", ddpm
  assert any(line.startswith("bfloat16 batch 512") and line.endswith("out of memory")
             for line in table.splitlines())
  assert "inception: no result after 90 s" in table


def test_a_failed_part_fails_the_script(tmp_path):
  """With an interpreter without JAX every part fails ("No module named 'jax'"): the table is
  still printed, and the exit status is non-zero with a line naming the failed parts (it was
  0). A part skipped for a stated reason, or train-max's last out-of-memory probe, is no
  failure."""
  import venv
  bare = tmp_path / "bare"
  venv.create(bare, with_pip=False)  # no site-packages: no JAX
  out = tmp_path / "out"
  env = dict(os.environ, PYTHON=str(bare / "bin" / "python"))
  run = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--cpu-smoke",
                        "--parts", "matmul", "--out", str(out), "--budget", "60"],
                       env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1, (run.stdout, run.stderr)
  assert "bf16 matmul" in run.stdout
  assert run.stderr.strip().splitlines()[-1] == (
      "accelerator.sh: 1 of 1 parts failed: matmul (ModuleNotFoundError: No module named 'jax')")
  fine = {"parts": {"train-max": {"256": {"images_per_s": 1.0}, "512": {"error": "OOM"}},
                    "attention": {"4 heads of 64, cudnn": {"skipped": "cuDNN needs a GPU"}},
                    "inception": {"skipped": "the budget of 60 s was spent"}}}
  assert accelerator.failed_parts(fine) == {}
  fine["parts"]["sample"] = {"ddim": {"error": "boom"}, "ddpm": {"ms_per_network_call": 1.0}}
  fine["parts"]["train"] = {"bfloat16": {"images_per_s": 5.0}, "stopped": "after 90 s"}
  assert accelerator.failed_parts(fine) == {"sample": "ddim: boom", "train": "stopped after 90 s"}
