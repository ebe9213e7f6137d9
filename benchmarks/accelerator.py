"""Accelerator figures in one time-boxed call: `bash benchmarks/accelerator.sh [--cpu-smoke]`.

Measures, on whatever device JAX finds (each part in its own process, with its own time limit,
so that an out-of-memory or a slow compile costs that part only):

  matmul        the device's bf16 matrix-product rate (the practical ceiling for MFU)
  train         the CIFAR-10 training step (loss, gradient, Adam, EMA) in bfloat16 and float32
                at batch 128, and the largest batch of a few probes that fits (bf16)
  torch-train   the same network as diffusers' UNet2DModel, eager, at the same batch and dtypes
                (torch-compile, only when --parts names it: the same through torch.compile)
  sample        each sampler's chain at batch 1,000 in bf16, truncated to a few dozen steps:
                ms per network call, extrapolated to 50,000 samples of 1,000 steps
  torch-sample  the same chains with diffusers' schedulers
  inception     the FID Inception's images/s (random weights: the real ones are not fetched),
                extrapolated to 50,000 images
  attention     jax.nn.dot_product_attention at the U-Net's attention shapes: XLA vs cuDNN
  train256      the 256x256 network (celebahq256.py) at batch 64 in bf16, beside PyTorch

It prints one table and writes every figure to OUT/accelerator.json (and each part's log).
Nothing is installed or downloaded; it runs from a checkout with PYTHONPATH set.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

CIFAR = os.path.join(ROOT, "experiments", "configs", "cifar10.py")
CELEBA = os.path.join(ROOT, "experiments", "configs", "celebahq256.py")

# Sizes of the full run and of the CPU smoke run (a small network, the same code paths).
FULL = dict(batch=128, batches=(256, 512, 1024), sample_batch=1000, sample_steps=24,
            train_steps=10, inception_batch=500, inception_batches=4, big_batch=64,
            matmul=8192, attention_batch=128)
SMOKE = dict(batch=8, batches=(16,), sample_batch=8, sample_steps=3, train_steps=2,
             inception_batch=4, inception_batches=1, big_batch=2, matmul=512, attention_batch=2)
SMOKE_MODEL = {"ch": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "num_groups": 8,
               "attn_resolutions": (16,)}


def _config(path: str, dtype: str, smoke: bool):
  from diffusion.config import load_config
  config = load_config(path)
  with config.unlocked():
    config.model.dtype = dtype
    if smoke:
      for key, value in SMOKE_MODEL.items():
        config.model[key] = value
      if config.data.image_size > 32:
        config.data.image_size = 32
  return config


def _model(config):
  from diffusion import models
  from diffusion.config import data_shape
  return models.build(dict(config.model), data_shape(config))


def _hlo_summary(text: str) -> dict:
  """What the optimised program runs: kernels (fusions), library convolutions and matmuls by
  element type, and float32 convolutions (there should be none in a bf16 program)."""
  import re
  convs = re.findall(r"= \(?(\w+)\[[^\n]*custom_call_target=\"__cudnn\$conv", text)
  gemms = re.findall(r"= \(?(\w+)\[[^\n]*custom_call_target=\"__cublas", text)
  plain = re.findall(r"= (\w+)\[[^\]]*\][^\n]* convolution\(", text)
  count = lambda xs: {k: xs.count(k) for k in sorted(set(xs))}
  return {"fusions": len(re.findall(r"^\s*\S+ = [^\n]* fusion\(", text, re.M)),
          "cudnn_convolutions": count(convs), "cublas_gemms": count(gemms),
          "xla_convolutions": count(plain)}


def part_matmul(sizes: dict, smoke: bool) -> dict:
  import jax
  import jax.numpy as jnp
  n = sizes["matmul"]
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  repeats = 3 if smoke else 20
  start = time.perf_counter()
  for _ in range(repeats):
    out = f(a, b)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / repeats
  device = jax.devices()[0]
  return {"n": n, "tflops_per_s": 2 * n**3 / seconds / 1e12, "device": device.device_kind,
          "platform": device.platform, "jax": jax.__version__, "devices": jax.device_count()}


def _train(path, dtype, batch, sizes, smoke, hlo=False) -> dict:
  import jax
  from diffusion import platforms
  from diffusion.benchmarks import timing as benchmark
  config = _config(path, dtype, smoke)
  model = _model(config)
  result = benchmark.bench_training(model, config, batch, steps=sizes["train_steps"],
                                    hlo=hlo)
  peak = platforms.peak_tflops(jax.devices()[0].device_kind, dtype)
  result["mfu"] = result["tflops_per_s"] / (peak * jax.device_count()) if peak else None
  result["peak_tflops"] = peak
  if "hlo" in result:
    result["hlo"] = _hlo_summary(result["hlo"])
  return result


def part_train(sizes: dict, smoke: bool) -> dict:
  out = {}
  for dtype in ("bfloat16", "float32"):
    out[dtype] = _train(CIFAR, dtype, sizes["batch"], sizes, smoke, hlo=True)
    _checkpoint(out)
  return out


def part_train_max(sizes: dict, smoke: bool) -> dict:
  """bf16 training at growing batches until one does not fit (or the part's time runs out:
  each probe's figures are written as soon as it finishes)."""
  out = {}
  for batch in sizes["batches"]:
    try:
      out[str(batch)] = _train(CIFAR, "bfloat16", batch, sizes, smoke)
    except Exception as error:  # out of memory: the previous probe is the largest
      out[str(batch)] = {"error": str(error).splitlines()[0][:300]}
      break
    _checkpoint(out)
  return out


def _torch_train(path, dtype, batch, sizes, smoke, compile=False) -> dict:
  from diffusion.benchmarks.torch_reference import bench_torch
  config = _config(path, dtype, smoke)
  model = _model(config)
  return bench_torch(model.module, config, batch, train_steps=sizes["train_steps"],
                     compile=compile)["train_step"]


def part_torch_train(sizes: dict, smoke: bool) -> dict:
  out = {}
  for dtype in ("bfloat16", "float32"):
    out[dtype] = _torch_train(CIFAR, dtype, sizes["batch"], sizes, smoke)
    _checkpoint(out)
  return out


def part_torch_compile(sizes: dict, smoke: bool) -> dict:
  return {"bfloat16": _torch_train(CIFAR, "bfloat16", sizes["batch"], sizes, smoke,
                                   compile=True)}


def part_sample(sizes: dict, smoke: bool) -> dict:
  from diffusion.benchmarks import timing as benchmark
  config = _config(CIFAR, "bfloat16", smoke)
  result = benchmark.bench_sampling(_model(config), config, sizes["sample_batch"],
                                    steps=sizes["sample_steps"])
  return result["samplers"]


def part_torch_sample(sizes: dict, smoke: bool) -> dict:
  from diffusion.benchmarks.torch_reference import bench_torch
  config = _config(CIFAR, "bfloat16", smoke)
  counts = {name: sizes["sample_steps"] for name in ("ddpm", "ddim", "dpm++")}
  return bench_torch(_model(config).module, config, sizes["sample_batch"], train_steps=0,
                     samplers=counts)["samplers"]


def part_inception(sizes: dict, smoke: bool) -> dict:
  import jax
  import numpy as np
  from diffusion.evaluation.inception import InceptionFeatures, InceptionV3
  batch = sizes["inception_batch"]
  variables = jax.jit(InceptionV3().init)(jax.random.key(0), np.zeros((1, 299, 299, 3)))
  features = InceptionFeatures(jax.device_get(variables), batch_size=batch)
  images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), np.uint8)
  start = time.perf_counter()
  features(images)
  first_s = time.perf_counter() - start
  images = np.concatenate([images] * sizes["inception_batches"])
  start = time.perf_counter()
  features(images)
  seconds = time.perf_counter() - start
  return {"batch": batch, "first_call_s": first_s, "images_per_s": len(images) / seconds,
          "seconds_for_50k": 50_000 * seconds / len(images)}


def part_attention(sizes: dict, smoke: bool) -> dict:
  """Forward and backward of the U-Net's attention (CIFAR-10: 16x16 positions, 256 channels,
  one head; and the same channels in heads of 64) with XLA's and with cuDNN's kernel."""
  import jax
  import jax.numpy as jnp
  batch = sizes["attention_batch"]
  out = {}
  for heads in (1, 4):
    shape = (batch, 256, heads, 256 // heads)
    q, k, v = (jax.random.normal(jax.random.key(i), shape, jnp.bfloat16) for i in range(3))
    for implementation in ("xla", "cudnn"):
      name = f"{heads} head{'s' if heads > 1 else ''} of {256 // heads}, {implementation}"
      if implementation == "cudnn" and jax.devices()[0].platform != "gpu":
        out[name] = {"skipped": "cuDNN needs a GPU"}
        continue
      loss = lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(
          q, k, v, implementation=implementation).astype(jnp.float32) ** 2)
      f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      try:
        jax.block_until_ready(f(q, k, v))
      except Exception as error:
        out[name] = {"error": str(error).splitlines()[0][:300]}
        continue
      repeats = 3 if smoke else 50
      start = time.perf_counter()
      for _ in range(repeats):
        r = f(q, k, v)
      jax.block_until_ready(r)
      out[name] = {"shape": list(shape), "ms": 1e3 * (time.perf_counter() - start) / repeats}
  return out


def part_train256(sizes: dict, smoke: bool) -> dict:
  return {"jax": _train(CELEBA, "bfloat16", sizes["big_batch"], sizes, smoke),
          "torch": _torch_train(CELEBA, "bfloat16", sizes["big_batch"], sizes, smoke)}


# (name, function, seconds it may take in the full run): the order is the order of importance,
# so that a short lease still gets the headline figures.
PARTS = [("matmul", part_matmul, 60), ("train", part_train, 150),
         ("torch-train", part_torch_train, 90), ("sample", part_sample, 120),
         ("torch-sample", part_torch_sample, 90), ("inception", part_inception, 90),
         ("attention", part_attention, 60), ("train-max", part_train_max, 150),
         ("train256", part_train256, 150), ("torch-compile", part_torch_compile, 120)]
# Run only when --parts names them: torch.compile of the U-Net took over 80 s on an H200 and
# over 60 s for the smoke network on a 2-core CPU (2026-11-27), not "seconds".
OPT_IN = ("torch-compile",)

_PARTIAL = None


def _checkpoint(result: dict) -> None:
  """Writes a part's figures so far, so that a part stopped at its time limit keeps them."""
  if _PARTIAL:
    with open(_PARTIAL, "w") as f:
      json.dump(result, f)


def run_part(name: str, out: str, smoke: bool) -> int:
  global _PARTIAL
  _PARTIAL = out + ".partial"
  function = dict((n, f) for n, f, _ in PARTS)[name]
  try:
    result = function(SMOKE if smoke else FULL, smoke)
  except Exception as error:
    traceback.print_exc()
    result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                       if str(error) else type(error).__name__}
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="small sizes and a small network: the whole script on a CPU")
  parser.add_argument("--out", default="accelerator-bench", help="folder for JSON and logs")
  parser.add_argument("--budget", type=float,
                      help="seconds for the whole script (default 450; 170 with --cpu-smoke)")
  parser.add_argument("--parts", help="comma-separated subset of: "
                      + ",".join(n for n, _, _ in PARTS))
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch parts")
  parser.add_argument("--part", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.part:
    return run_part(args.part, os.path.join(args.out, f"{args.part}.json"), args.cpu_smoke)
  names = [n for n, _, _ in PARTS]
  chosen = ([n for n in names if n not in OPT_IN] if not args.parts
            else [p.strip() for p in args.parts.split(",") if p.strip()])
  unknown = [p for p in chosen if p not in names]
  if unknown:
    parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
  if args.no_torch:
    chosen = [p for p in chosen if not p.startswith("torch") and p != "train256"]
  budget = args.budget or (170.0 if args.cpu_smoke else 450.0)
  if budget <= 0:
    parser.error(f"--budget must be positive; got {args.budget}")
  os.makedirs(args.out, exist_ok=True)
  deadline = time.monotonic() + budget
  results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": args.cpu_smoke,
             "sizes": SMOKE if args.cpu_smoke else FULL, "parts": {}}
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.cpu_smoke:  # the code paths, not the speed: compile fast
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  limits = dict((n, s) for n, _, s in PARTS)
  for name in chosen:
    left = deadline - time.monotonic()
    # The smoke run keeps each part's full limit (a loaded 2-core machine starts a JAX process
    # slowly); the budget caps the whole.
    limit = min(limits[name], left)
    if limit < 10:
      results["parts"][name] = {"skipped": f"the budget of {budget:.0f} s was spent"}
      continue
    print(f"[{time.strftime('%H:%M:%S')}] {name} (at most {limit:.0f} s)", flush=True)
    out = os.path.join(args.out, f"{name}.json")
    start = time.monotonic()
    with open(os.path.join(args.out, f"{name}.log"), "w") as log:
      command = [sys.executable, os.path.abspath(__file__), "--part", name, "--out", args.out]
      try:
        subprocess.run(command + (["--cpu-smoke"] if args.cpu_smoke else []), env=env,
                       stdout=log, stderr=subprocess.STDOUT, timeout=limit, check=False)
      except subprocess.TimeoutExpired:
        pass
    seconds = time.monotonic() - start
    if os.path.exists(out):
      with open(out) as f:
        part = json.load(f)
    elif os.path.exists(out + ".partial"):
      with open(out + ".partial") as f:
        part = {**json.load(f), "stopped": f"after {seconds:.0f} s"}
    else:
      part = {"error": f"no result after {seconds:.0f} s (see {name}.log)"}
    part["wall_s"] = round(seconds, 1)
    results["parts"][name] = part
    with open(os.path.join(args.out, "accelerator.json"), "w") as f:
      json.dump(results, f, indent=1)
  table = format_results(results)
  print(table)
  with open(os.path.join(args.out, "accelerator.txt"), "w") as f:
    f.write(table + "\n")
  failed = failed_parts(results)
  if failed:
    print(f"accelerator.sh: {len(failed)} of {len(chosen)} parts failed: "
          + "; ".join(f"{name} ({why})" for name, why in failed.items()), file=sys.stderr)
    return 1
  return 0


def failed_parts(results: dict) -> dict[str, str]:
  """{part: why} for each part that failed: an error of its own or of one of its variants,
  no result, or stopped at its time limit. A part skipped for a stated reason (the budget
  spent, cuDNN without a GPU) has not failed, nor has train-max's last probe, whose out of
  memory ends the search for the largest batch."""
  failed = {}
  for name, part in results["parts"].items():
    why = part.get("error") or part.get("stopped") and f"stopped {part['stopped']}"
    if not why and name != "train-max":
      why = next((f"{key}: {value['error']}" for key, value in part.items()
                  if isinstance(value, dict) and "error" in value), None)
    if why:
      failed[name] = why[:200]
  return failed


def _num(value, digits=1) -> str:
  return "-" if value is None else f"{value:,.{digits}f}"


def format_results(results: dict) -> str:
  parts = results["parts"]
  matmul = parts.get("matmul", {})
  lines = [f"{matmul.get('platform', '?')} {matmul.get('device', '?')} x "
           f"{matmul.get('devices', '?')}, JAX {matmul.get('jax', '?')}, {results['date']}"
           + (" (CPU smoke: small network, small sizes)" if results["smoke"] else ""),
           f"bf16 matmul {matmul.get('n', '?')}^3: {_num(matmul.get('tflops_per_s'))} TFLOP/s"]
  train, torch_train = parts.get("train", {}), parts.get("torch-train", {})
  compiled = parts.get("torch-compile", {}).get("bfloat16", {})
  rate = matmul.get("tflops_per_s")
  lines.append(f"{'training (CIFAR-10 net)':<28} {'img/s':>9} {'MFU':>6} {'of mm':>6} "
               f"{'GiB':>6} {'compile s':>9} {'PyTorch':>9} {'ratio':>6} {'compiled':>9}")
  rows = [(f"{dtype} batch {results['sizes']['batch']}", train.get(dtype, {}),
           torch_train.get(dtype, {}), compiled if dtype == "bfloat16" else {})
          for dtype in ("bfloat16", "float32")]
  rows += [(f"bfloat16 batch {b}", r, {}, {}) for b, r in parts.get("train-max", {}).items()
           if isinstance(r, dict) and b.isdigit()]
  big = parts.get("train256", {})
  if "jax" in big or "torch" in big:
    rows.append((f"256x256 net bf16 batch {results['sizes']['big_batch']}", big.get("jax", {}),
                 big.get("torch", {}), {}))
  for label, ours, theirs, comp in rows:
    if "error" in ours and "images_per_s" not in ours:
      lines.append(f"{label:<28} {ours['error'][:80]}")
      continue
    mfu = ours.get("mfu")
    of_mm = (ours.get("tflops_per_s") / rate if rate and ours.get("tflops_per_s") else None)
    ratio = (ours["images_per_s"] / theirs["images_per_s"]
             if ours.get("images_per_s") and theirs.get("images_per_s") else None)
    lines.append(f"{label:<28} {_num(ours.get('images_per_s')):>9} "
                 f"{_num(None if mfu is None else 100 * mfu):>5}% "
                 f"{_num(None if of_mm is None else 100 * of_mm):>5}% "
                 f"{_num(ours.get('peak_gib'), 2):>6} {_num(ours.get('compile_s')):>9} "
                 f"{_num(theirs.get('images_per_s')):>9} {_num(ratio, 2):>6} "
                 f"{_num(comp.get('images_per_s')):>9}")
  sample, torch_sample = parts.get("sample", {}), parts.get("torch-sample", {})
  lines.append(f"{'sampling bf16, batch ' + str(results['sizes']['sample_batch']):<28} "
               f"{'ms/call':>9} {'samples/s':>10} {'50k x 1000 steps':>17} {'PyTorch ms':>11} "
               f"{'ratio':>6}")
  for name in ("ddpm", "ddim", "dpm++"):
    ours, theirs = sample.get(name, {}), torch_sample.get(name, {})
    ms = ours.get("ms_per_network_call")
    minutes = 50_000 / results["sizes"]["sample_batch"] * 1000 * ms / 1e3 / 60 if ms else None
    ratio = theirs["ms_per_network_call"] / ms if ms and "ms_per_network_call" in theirs \
        else None
    lines.append(f"{name + ' (' + str(ours.get('steps', '?')) + ' steps timed)':<28} "
                 f"{_num(ms, 2):>9} {_num(ours.get('samples_per_s')):>10} "
                 f"{_num(minutes):>13} min {_num(theirs.get('ms_per_network_call'), 2):>11} "
                 f"{_num(ratio, 2):>6}")
  inception = parts.get("inception", {})
  lines.append(f"FID Inception: {_num(inception.get('images_per_s'))} images/s, 50k in "
               f"{_num(inception.get('seconds_for_50k'))} s (batch {inception.get('batch')})")
  for name, r in parts.get("attention", {}).items():
    if isinstance(r, dict):
      lines.append(f"attention {name}: " + (f"{r['ms']:.3f} ms fwd+bwd" if "ms" in r
                                            else r.get("skipped") or r.get("error", "")))
  for name, r in parts.items():
    if isinstance(r, dict) and ("error" in r or "skipped" in r or "stopped" in r):
      lines.append(f"{name}: {r.get('error') or r.get('skipped') or r.get('stopped')}")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
