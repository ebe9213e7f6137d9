"""Negative log-likelihood of a dataset in bits/dim by the probability-flow ODE (Song et al.
2021, App. D): each image dequantized uniformly, carried to the prior by an adaptive solve
(`diffusion.ode_likelihood`, diffrax) with the divergence exact or estimated by Rademacher
probes (each held through its solve; several give a standard error), sharded over devices.

The network is evaluated at its method's own continuous levels: flow matching's t, EDM's σ,
and for a DDPM run at fractional timesteps t ∈ [0, T − 1] with log ᾱ(t) linear between the
schedule's steps (`DDPM.field`).

With `decoder` (DDPM runs), the lowest level is scored as the bound scores it instead of by
dequantization: the chain's discretized decoder p(x | z) at t = 0 (Ho et al.; the outer bins
take the Gaussian's tails) on top of the ODE's density of z = √ᾱ_0 x + σ_0 ε, a one-sample
estimate of the bound  −log P(x) ≤ E_ε[−log p(x | z) − log p_ODE(z) + log q(z | x)]  (the
ODE as the prior of a one-step variational bound, as VDM scores its lowest level). Without it a
DDPM's ODE pays for σ_0 = √β_1 on 8-bit bins what no network can remove (1.71 bits/dim at
β_1 = 1e-4; experiments/README "Likelihood").

Image i draws its dequantization noise (or ε) and probes from fold_in(key, i), and each image is
solved with its own adaptive steps: a result does not depend on the batch size, the other
images of its batch or the number of devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion import likelihood, ode_likelihood
from diffusion.evaluation.nll import checked_images
from diffusion.sampling import in_batches, memoized, over_samples

LEVELS = 256  # 8-bit data: bits/dim on the grid of 256 levels


@memoized
def make_ode_nll_fn(run, mesh: Mesh, *, probes: int = 1, exact: bool = False,
                    rtol: float = 1e-5, atol: float = 1e-5, decoder: bool = False):
  """nll(variables, key, first_index, images float [N, ...] in [0, 255], labels int [N]) ->
  (bits/dim [N, P] of each image under each of P probes (P = 1 with `exact`), solver steps
  [N]) of a `runs.Run`'s network, jitted and sharded over `mesh`."""
  method, model, spec = run.method, run.model, run.diffusion.spec
  tau0, tau1 = method.ode_span()
  scale = method.prior_scale(tau1)
  dims = int(np.prod(spec.shape))
  half = (LEVELS - 1) / 2
  ab = 1.0 - float(run.diffusion.betas[0]) if decoder else None  # ᾱ of the chain's first level

  def device_nll(variables, key, index, x, labels):
    def f(x_t, level, y):  # each image's own solve, with its label
      return method.field(lambda x_t, level: model(
          variables, x_t, level, y if model.num_classes else None))(x_t, level)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    if decoder:  # z ~ q(z | x) at the chain's first level, and the decoder's bits/dim
      d = run.diffusion
      x0 = x / half - 1
      eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), x.shape[1:]))(keys)
      y = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
      t0 = jnp.zeros((x.shape[0],), jnp.int32)
      out = model(variables, y, t0, labels if model.num_classes else None)
      decoded = likelihood.vlb_term(d.schedule, out, x0, y, t0, prediction=d.prediction,
                                    variance=d.variance, clip_x0=d.clip_x0)
      log_q = (-0.5 * jnp.sum(eps.reshape(len(x), -1) ** 2, axis=1)
               - dims * (0.5 * np.log(2 * np.pi) + 0.5 * np.log(1 - ab)))
    else:
      u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), x.shape[1:]))(keys)
      y = (x + u - 0.5) / half - 1  # uniform dequantization around each level, model units
    prior = lambda z: ode_likelihood.gaussian_logp(z, scale)
    results, steps = [], None
    for p in range(1 if exact else probes):
      probe = None if exact else jax.vmap(lambda k: jax.random.rademacher(
          jax.random.fold_in(k, 1 + p), x.shape[1:], jnp.float32))(keys)
      logp, steps = ode_likelihood.log_likelihood(f, y, tau0, tau1, prior, probe=probe,
                                                  context=labels,
                                                  rtol=rtol, atol=atol)
      if decoder:
        results.append(decoded + (log_q - logp) / (dims * np.log(2.0)))
      else:  # the density of x + u on the 8-bit grid is p(y) / half^D
        results.append((-logp + dims * np.log(half)) / (dims * np.log(2.0)))
    return jnp.stack(results, axis=1), steps.astype(jnp.int32)

  program = over_samples(device_nll, mesh, 2)

  def nll(variables, key, first_index, images, labels=None):
    labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)
    return program(variables, key, first_index, np.asarray(images, np.float32), labels)

  return nll


def dataset_ode_bits_per_dim(run, variables, images: np.ndarray, mesh: Mesh, key: jax.Array, *,
                             labels: np.ndarray | None = None, batch: int = 64,
                             probes: int = 1, exact: bool = False, rtol: float = 1e-5,
                             atol: float = 1e-5, decoder: bool = False,
                             progress: bool = True) -> dict:
  """The ODE likelihood of uint8 images [N, ...] under a run's network, in bits/dim.

  Returns {"bpd": the mean over images and probes, "bpd_stderr": its standard error over
  images, "probe_std": the spread of one image's estimate over probes (0 when exact),
  "solver_steps": the mean steps of a solve, "num_images", "probes", "exact", "decoder"}.
  `decoder`: the lowest level scored by the DDPM chain's decoder (module docstring)."""
  if decoder and run.method.name != "ddpm":
    raise ValueError(f"`decoder` scores the lowest level by a DDPM chain's decoder; this run's "
                     f"method is {run.method.name!r}")
  images = checked_images(run, images)
  if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
    raise ValueError(f"`probes` must be a positive int; got {probes!r}")
  run.method.ode_span()  # a method without one says so before anything compiles
  batch += (-batch) % mesh.size
  fn = make_ode_nll_fn(run, mesh, probes=probes, exact=exact, rtol=rtol, atol=atol,
                       decoder=decoder)
  per, steps = in_batches(
      lambda first, rows: fn(variables, key, first, images[rows].astype(np.float32),
                             None if labels is None else labels[rows]),
      len(images), batch, mesh, desc="ODE bits/dim", unit="image", progress=progress)
  per_image = per.mean(axis=1)
  n = len(per_image)
  return {"bpd": float(per_image.mean()),
          "bpd_stderr": float(per_image.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
          "probe_std": float(per.std(axis=1, ddof=1).mean()) if per.shape[1] > 1 else 0.0,
          "solver_steps": float(steps.mean()), "num_images": n,
          "probes": 1 if exact else probes, "exact": bool(exact), "decoder": bool(decoder)}
