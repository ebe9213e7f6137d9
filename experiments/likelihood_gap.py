"""Why a DDPM's probability-flow ODE scores 8-bit data worse than its variational bound: the
bound's terms, the ODE's numerics (Hutchinson probes, the exact divergence, a tighter solve),
and both measures under the exact denoiser of a data split's own empirical distribution (a
perfect model), beside what each pays at the lowest noise level in closed form.

  python experiments/likelihood_gap.py --workdir runs/digits --num 40 [--exact] --out gap.json

For the empirical distribution of N images of D dimensions, a perfect model's NLL of each of
them is log2(N) / D bits/dim plus the cost of scoring its 8-bit bins at the chain's lowest
level: for the ODE, the density of a Gaussian of std σ_0 (√(1 − ᾱ_0)) averaged over a bin
(half-width 1/255 in model units); for the bound, the decoder's mass in the bin, the outer
bins (0 and 255) taking the Gaussian's whole tail (Ho et al.'s discretized decoder).
"""

import argparse
import json
import time

import numpy as np

HALF_BIN = 1 / 255  # half an 8-bit bin in model units ([-1, 1])


def ode_floor(sigma: float) -> float:
  """bits/dim of uniform dequantization scored by N(0, σ²) around each level."""
  from scipy.stats import norm
  u = np.linspace(-HALF_BIN, HALF_BIN, 20001)
  return float(np.mean(-norm.logpdf(u, scale=sigma)) / np.log(2) + np.log2(127.5))


def decoder_floor(sigma: float, edge_fraction: float) -> float:
  """bits/dim of a discretized N(x, σ²) decoder: a bin's mass, or a tail at the outer bins."""
  from scipy.special import erf
  from scipy.stats import norm
  inner = -np.log2(erf(HALF_BIN / (sigma * np.sqrt(2))))
  outer = -np.log2(norm.cdf(HALF_BIN / sigma))
  return float((1 - edge_fraction) * inner + edge_fraction * outer)


def exact_denoiser(run, images):
  """A Denoiser predicting ε exactly for the empirical distribution of `images` (uint8), at
  integer or fractional t (`DDPM.log_alpha_bar`, the levels of `DDPM.field`)."""
  import jax
  import jax.numpy as jnp
  from diffusion.models.denoiser import Denoiser
  data = jnp.asarray(images.reshape(len(images), -1) / 127.5 - 1, jnp.float32)

  def eps(x, t):
    log = run.method.log_alpha_bar(jnp.asarray(t, jnp.float32))[0]
    alpha, sigma = jnp.exp(0.5 * log)[:, None], jnp.sqrt(-jnp.expm1(log))[:, None]
    flat = x.reshape(x.shape[0], -1)
    d2 = jnp.sum((flat[:, None] - alpha[:, None] * data[None]) ** 2, axis=-1)  # [B, N]
    x0 = jax.nn.softmax(-d2 / (2 * sigma ** 2), axis=1) @ data
    return ((flat - alpha * x0) / sigma).reshape(x.shape)

  return Denoiser(init_fn=lambda *a: {"params": {}}, name="exact denoiser",
                  apply_fn=lambda v, x, t, y, c, train, rng: (eps(x, t), {}))


def bound(run, variables, images, mesh, key) -> dict:
  from diffusion.evaluation.nll import dataset_bits_per_dim
  b = dataset_bits_per_dim(run, variables, images, mesh, key, batch=100, progress=False)
  terms = b["terms"]
  return {"bpd": b["bpd"], "L0": float(terms[0]), "L1-9": float(terms[1:10].sum()),
          "L10-99": float(terms[10:100].sum()), "L100-": float(terms[100:].sum()),
          "per_image": b["per_image"]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a DDPM run on 8-bit data")
  parser.add_argument("--split", default="test")
  parser.add_argument("--num", type=int, default=40, help="images for the ODE's numerics")
  parser.add_argument("--exact", action="store_true",
                      help="also the exact divergence (one JVP per dimension: minutes)")
  parser.add_argument("--out")
  args = parser.parse_args(argv)
  from diffusion.distributed import make_mesh, replicate, use_cpu_cores
  use_cpu_cores()
  from diffusion.evaluation.measures import _split_images
  from diffusion.evaluation.ode_nll import dataset_ode_bits_per_dim
  from diffusion.runs import base_key, load_run
  run = load_run(args.workdir)
  images, _ = _split_images(run, args.split, None)
  mesh, key = make_mesh(), base_key(0, "evaluate")
  variables = replicate(run.variables, mesh)
  first = images[:args.num]
  result = {}

  def show(name, value):
    result[name] = value
    print(f"{name}: {json.dumps(value)}", flush=True)

  b = bound(run, variables, images, mesh, key)
  show("bound, all images", {k: v for k, v in b.items() if k != "per_image"})
  show(f"bound, first {len(first)}", float(b.pop("per_image")[:args.num].mean()))
  settings = [("ODE, 2 probes", dict(probes=2)),
              ("ODE, 2 probes, rtol = atol = 1e-6", dict(probes=2, rtol=1e-6, atol=1e-6))]
  if args.exact:
    settings.append(("ODE, exact divergence", dict(exact=True)))
  for name, options in settings:
    start = time.time()
    r = dataset_ode_bits_per_dim(run, variables, first, mesh, key, batch=len(first),
                                 progress=False, **options)
    show(f"{name}, first {len(first)}", {"bpd": r["bpd"], "stderr": r["bpd_stderr"],
                                         "solver_steps": r["solver_steps"],
                                         "seconds": round(time.time() - start, 1)})
  if run.model.learned_variance:  # the exact denoiser predicts ε only
    print("learned variances: no exact-denoiser rows (run them on a fixed-variance run)")
    return _write(args.out, result)
  perfect = run.replace(model=exact_denoiser(run, images), variables={"params": {}})
  show("exact denoiser: bound", {k: v for k, v in bound(
      perfect, perfect.variables, first, mesh, key).items() if k != "per_image"})
  r = dataset_ode_bits_per_dim(perfect, perfect.variables, first, mesh, key, batch=len(first),
                               probes=2, progress=False)
  show("exact denoiser: ODE", {"bpd": r["bpd"], "stderr": r["bpd_stderr"]})
  schedule = run.diffusion.schedule
  betas = np.asarray(schedule.betas, np.float64)
  abar = np.cumprod(1 - betas)
  # The fixed variances' decoder at t = 0: β̃ of the second step (β̃_1 is 0).
  decoder_sigma = float(np.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1])))
  edge = float(np.mean((images == 0) | (images == 255)))
  show("closed form", {
      "mixture": float(np.log2(len(images)) / images[0].size), "edge_fraction": edge,
      "sigma_0": float(np.sqrt(1 - abar[0])), "ode_floor": ode_floor(np.sqrt(1 - abar[0])),
      "decoder_sigma_t0": decoder_sigma, "decoder_floor": decoder_floor(decoder_sigma, edge)})
  return _write(args.out, result)


def _write(path, result) -> int:
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
