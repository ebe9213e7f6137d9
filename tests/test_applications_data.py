"""The applications on data other than uint8 images, against closed forms: with Gaussian data
the exact ε-predictor is known, and so are the conditionals that inpainting, denoising and
enhancement should sample."""

import jax.numpy as jnp
import numpy as np
import pytest

from _tiny import tiny_config
from diffusion import models
from diffusion.applications import anomaly_scores, denoise, enhance, inpaint
from diffusion.config import schedule_from_config
from diffusion.distributed import make_mesh
from diffusion.runs import build, base_key

T = 200


def config_for(**data):
  """T = 200 linear steps (betas scaled by 1000/T), no x0 clipping (data not in [-1, 1])."""
  config = tiny_config()
  config.diffusion.update(num_steps=T, beta_start=5e-4, beta_end=0.1, clip_x0=False)
  config.data.update(data)
  return config


def gaussian_denoiser(config, mean, cov, *, cond_channels=0, centred=False):
  """The exact ε-prediction E[ε | x_t] for data x0 ~ N(mean, cov) in the model's units
  (mean [*shape], cov [D, D] over the flattened example): sqrt(1 - ᾱ) (ᾱ Σ + (1 - ᾱ) I)^-1
  (x_t - sqrt(ᾱ) μ). With `cond_channels` the mean is the conditioning input instead.
  `centred`: x_t is centred over the points first (cov then lives in that subspace)."""
  ac = np.asarray(schedule_from_config(config).alphas_cumprod, np.float64)
  cov = np.asarray(cov, np.float64)
  # (ᾱ_t Σ + (1 - ᾱ_t) I)^-1 for every t, on the host (a batched solve on 8 CPU devices can
  # stall XLA's CPU runtime).
  inverse = jnp.asarray(np.linalg.inv(ac[:, None, None] * cov + (1 - ac[:, None, None])
                                      * np.eye(len(cov))), jnp.float32)
  ac = jnp.asarray(ac, jnp.float32)

  def apply(params, x, t, cond=None):
    b = x.shape[0]
    if centred:
      x = x - x.mean(axis=-2, keepdims=True)
    mu = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), x.shape) if cond is None else cond
    a = ac[t][:, None]  # [b, 1]
    r = x.reshape(b, -1) - jnp.sqrt(a) * mu.reshape(b, -1)
    eps = jnp.sqrt(1 - a) * jnp.einsum("bij,bj->bi", inverse[t], r)
    return eps.reshape(x.shape)

  return models.function(apply, params=jnp.zeros(()), cond_channels=cond_channels)


def correlated(n, rho=0.9, std=1.0):
  """cov[i, j] = std² rho^|i - j| (an AR(1) sequence)."""
  i = np.arange(n)
  return std**2 * rho ** np.abs(i[:, None] - i[None, :])


def test_inpainting_a_float_sequence_samples_the_gaussian_conditional():
  """A sequence of 16 (scale 2: data = 2 × model units), AR(1) with ρ = 0.9, whose first half is
  known 2 model units above its mean. The completions should follow the Gaussian conditional
  μ_u + Σ_uk Σ_kk⁻¹ (x_k - μ_k), Σ_uu - Σ_uk Σ_kk⁻¹ Σ_ku. Plain replacement (1 resampling) falls
  short of it, as Lugmayr et al. found: measured mean error up to 0.69 model units; RePaint's
  10 resamplings bring it to ≤ 0.15 (20: ≤ 0.10), std within 17% (512 samples; the
  unconditional mean is up to 1.8 away)."""
  scale = 2.0
  config = config_for(shape=(16, 1), kind="sequence", dtype="float32", scale=scale)
  mu = np.sin(np.arange(16) / 3.0)[:, None]
  cov = correlated(16)
  model = gaussian_denoiser(config, mu, cov)
  known = np.arange(16) < 8
  x_model = mu[:, 0] + 2.0 * known
  u, k = ~known, known
  gain = cov[np.ix_(u, k)] @ np.linalg.inv(cov[np.ix_(k, k)])
  want_mean = mu[u, 0] + gain @ (x_model[k] - mu[k, 0])
  want_std = np.sqrt(np.diag(cov[np.ix_(u, u)] - gain @ cov[np.ix_(k, u)]))
  assert np.abs(want_mean - mu[u, 0]).max() > 1.5
  errors = {}
  for resamplings in (1, 10):
    out = inpaint(build(config, model), {"params": jnp.zeros(())},
                  (x_model * scale)[:, None].astype(np.float32), known, make_mesh(),
                  base_key(0, "sample"), num_samples=512, steps=50, jump_length=5,
                  resamplings=resamplings)
    assert out.shape == (512, 16, 1) and out.dtype == np.float32
    got = out[:, u, 0] / scale
    errors[resamplings] = np.abs(got.mean(0) - want_mean).max()
  np.testing.assert_allclose(got.std(0), want_std, rtol=0.25)
  assert errors[10] < 0.22 and errors[1] > 0.4, errors
  with pytest.raises(ValueError, match="`num_samples` must be an int >= 1; got 0"):
    inpaint(build(config, model), {"params": jnp.zeros(())}, (x_model * scale)[:, None], known,
            make_mesh(), base_key(0, "sample"), num_samples=0, steps=50)


def test_inpainting_points_scaffolds_a_motif_in_its_own_frame():
  """Point sets of 6 points: a fixed template (model units, centred) with noise 0.05, scale 4.
  Three points are given as the template's, moved by d = (10, -5, 3) data units; the other
  three are generated where the template has them, moved by the same d: the chain runs in the
  given points' frame, which a translation-invariant network (with centred predictions)
  allows."""
  scale, s = 4.0, 0.05
  config = config_for(shape=(6, 3), kind="points", dtype="float32", scale=scale)
  rng = np.random.default_rng(0)
  template = rng.normal(size=(6, 3))
  template -= template.mean(0)
  centring = np.kron(np.eye(6) - 1 / 6, np.eye(3))  # the zero-centre-of-mass projector
  model = gaussian_denoiser(config, template, s**2 * centring, centred=True)
  d = np.array([10.0, -5.0, 3.0])
  given = np.zeros((6, 3), np.float32)
  given[:3] = template[:3] * scale + d
  known = np.array([True, True, True, False, False, False])
  out = inpaint(build(config, model), {"params": jnp.zeros(())}, given, known, make_mesh(),
                base_key(1, "sample"), num_samples=64, steps=50, jump_length=5, resamplings=5)
  error = out[:, 3:] - (template[3:] * scale + d)
  # Measured: mean error ≤ 0.08 Å per coordinate, rms distance 0.6 Å per point (the
  # template's noise alone gives about 0.4, RePaint's slightly wider spread the rest).
  assert np.abs(error.mean(0)).max() < 0.3, error.mean(0)
  assert np.sqrt((error**2).sum(-1).mean(0)).max() < 1.0


def test_denoising_float_data_samples_the_gaussian_posterior():
  """A sequence of 16 (scale 2) with AR(1) prior, observed with noise of std σ = 1 data unit
  (0.5 model units): the samples' mean and std follow the posterior μ + Σ(Σ + s²I)⁻¹(y - μ),
  Σ - Σ(Σ + s²I)⁻¹Σ. Reading σ in the [0, 1]-range convention of uint8 data (s = 2) would give
  a posterior mean about 0.5 model units off."""
  scale, sigma = 2.0, 1.0
  config = config_for(shape=(16, 1), kind="sequence", dtype="float32", scale=scale)
  mu = np.zeros((16, 1))
  cov = correlated(16)
  model = gaussian_denoiser(config, mu, cov)
  rng = np.random.default_rng(3)
  clean = rng.multivariate_normal(mu[:, 0], cov)
  noisy = (clean + sigma / scale * rng.standard_normal(16)) * scale
  samples = denoise(build(config, model), {"params": jnp.zeros(())},
                    np.repeat(noisy[None, :, None], 512, 0).astype(np.float32), sigma, make_mesh(),
                    base_key(0, "sample"))
  s2 = (sigma / scale) ** 2
  gain = cov @ np.linalg.inv(cov + s2 * np.eye(16))
  want_mean = gain @ (noisy / scale)
  want_std = np.sqrt(np.diag(cov - gain @ cov))
  wrong = cov @ np.linalg.inv(cov + 4 * sigma**2 * np.eye(16)) @ (noisy / scale)
  assert np.abs(wrong - want_mean).max() > 0.3
  np.testing.assert_allclose(samples[..., 0].mean(0), want_mean, atol=0.06)
  np.testing.assert_allclose(samples[..., 0].std(0), want_std, rtol=0.15)
  with pytest.raises(ValueError, match=r"`sigma` must be > 0 \(a standard deviation in the data"):
    denoise(build(config, model), {"params": jnp.zeros(())}, noisy[:, None].astype(np.float32), 0.0,
            make_mesh(), base_key(0, "sample"))
  most = np.sqrt(1 / schedule_from_config(config).alphas_cumprod[-1] - 1) * scale  # data units
  with pytest.raises(ValueError, match=rf"`sigma` 1000.0 is more noise than the model's last "
                                       rf"step holds \(at most {most:.3g} in the units of `sigma`"):
    denoise(build(config, model), {"params": jnp.zeros(())},
            noisy[:, None].astype(np.float32), 1000.0,
            make_mesh(), base_key(0, "sample"))
  with pytest.raises(ValueError, match=r"noisy data is uint8; this run's data is float32"):
    denoise(build(config, model), {"params": jnp.zeros(())}, np.zeros((16, 1), np.uint8), 0.5,
            make_mesh(), base_key(0, "sample"))


def test_enhancement_reads_the_condition_in_the_data_units():
  """x | c ~ N(c, 0.1²) in model units, scale 3: the enhanced samples sit on the condition in
  data units (c · 3), with std 0.3."""
  scale = 3.0
  config = config_for(shape=(8, 1), kind="sequence", dtype="float32", scale=scale)
  model = gaussian_denoiser(config, None, 0.01 * np.eye(8), cond_channels=1)
  degraded = (np.linspace(-1, 1, 8)[:, None] * scale).astype(np.float32)
  out = enhance(build(config, model), {"params": jnp.zeros(())}, np.repeat(degraded[None], 64, 0),
                make_mesh(), base_key(0, "sample"), sampler="ddim", steps=20)
  np.testing.assert_allclose(out.mean(0) * scale, degraded, atol=0.15)
  with pytest.raises(ValueError, match=r"the degraded data has shape \(8, 2\)"):
    enhance(build(config, model), {"params": jnp.zeros(())}, np.zeros((8, 2), np.float32),
            make_mesh(),
            base_key(0, "sample"))


def test_anomaly_maps_of_volumes_point_at_the_anomaly():
  """uint8 volumes 4×4×4 of a grey 128 ± 3 prior; one has a bright 2×2×2 corner. Its score is
  higher and its map (per voxel, [N, 4, 4, 4]) peaks inside the corner."""
  config = config_for(shape=(4, 4, 4, 1), kind="volume", dtype="uint8")
  model = gaussian_denoiser(config, np.zeros((4, 4, 4, 1)), (3 / 127.5) ** 2 * np.eye(64))
  rng = np.random.default_rng(0)
  volumes = np.clip(np.round(128 + 3 * rng.standard_normal((8, 4, 4, 4, 1))), 0, 255).astype(np.uint8)
  volumes[5, 2:, 2:, :2] = 255
  scores, maps, recon = anomaly_scores(build(config, model), {"params": jnp.zeros(())}, volumes,
                                       make_mesh(), base_key(0, "sample"), at_step=T // 2,
                                       sampler="ddim", steps=10)
  assert maps.shape == (8, 4, 4, 4) and recon.shape == (8, 4, 4, 4, 1)
  assert np.argmax(scores) == 5 and scores[5] > 10 * np.delete(scores, 5).max()
  corner = np.zeros((4, 4, 4), bool)
  corner[2:, 2:, :2] = True
  assert maps[5][corner].min() > maps[5][~corner].max()


def test_a_second_call_reuses_the_sampler_and_its_compiled_programs():
  """Calling an application again with the same model and options (a notebook, a research
  loop) traces nothing new: `sampling.memoized` hands back the same jitted program. A changed
  config value, another model object or an option of another type (steps=2.0 is not the
  int 2) builds afresh."""
  import dataclasses
  import jax
  from diffusion.sampling import make_sampler
  config = config_for(shape=(8, 1), kind="sequence", dtype="float32", scale=1.0)
  model = gaussian_denoiser(config, np.zeros((8, 1)), correlated(8))
  variables, mesh, key = {"params": jnp.zeros(())}, make_mesh(), base_key(0, "sample")
  data, mask = np.ones((8, 8, 1), np.float32), np.arange(8) < 4
  traces = []
  listener = lambda event, seconds, **kw: traces.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    first = inpaint(build(config, model), variables, data, mask, mesh, key, steps=8, jump_length=4,
                    resamplings=2)
    traced = traces.count("/jax/core/compile/jaxpr_trace_duration")
    again = inpaint(build(config, model), variables, data + 1, mask, mesh, key, steps=8,
                    jump_length=4,
                    resamplings=2)
    retraced = traces.count("/jax/core/compile/jaxpr_trace_duration") - traced
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert traced > 0 and retraced == 0 and first.shape == again.shape == data.shape

  sampler = make_sampler(build(config, model), mesh, sampler="ddim", steps=2)
  assert make_sampler(build(config, model), mesh, sampler="ddim", steps=2) is sampler
  with pytest.raises(ValueError, match=r"`steps` must be an int in \[1, 200\]"):
    make_sampler(build(config, model), mesh, sampler="ddim", steps=2.0)
  other = gaussian_denoiser(config, np.zeros((8, 1)), correlated(8))
  assert make_sampler(build(config, other), mesh, sampler="ddim", steps=2) is not sampler
  # Networks the registry rebuilds (what load_run gives for each checkpoint) are the same
  # network when their name and module are: one program for all of them.
  built = lambda ch: models.build({"name": "unet", "ch": ch, "ch_mult": (1,), "num_groups": 4,
                                   "attn_resolutions": ()}, (8, 1))
  unet = make_sampler(build(config, built(16)), mesh, sampler="ddim", steps=2)
  assert make_sampler(build(config, built(16)), mesh, sampler="ddim", steps=2) is unet
  assert make_sampler(build(config, built(32)), mesh, sampler="ddim", steps=2) is not unet
  wrapped = dataclasses.replace(built(16), apply_fn=lambda *args: built(16).apply_fn(*args))
  assert make_sampler(build(config, wrapped), mesh, sampler="ddim", steps=2) is not unet
  config.diffusion.clip_x0 = True
  assert make_sampler(build(config, model), mesh, sampler="ddim", steps=2) is not sampler


def test_float_data_is_sampled_unclipped_unless_the_config_says_so():
  """x0 ~ N(3, 0.1²) per element in model units (float data, scale 1): unset clip_x0 leaves
  float samples alone (mean 3); clip_x0 = True clips them to [-1, 1], as it does uint8 data
  by default."""
  from diffusion.config import clip_x0
  from diffusion.sampling import make_sampler
  config = config_for(shape=(4, 1), kind="sequence", dtype="float32", scale=1.0)
  del config.diffusion["clip_x0"]
  model = gaussian_denoiser(config, np.full((4, 1), 3.0), 0.01 * np.eye(4))
  variables, mesh, key = {"params": jnp.zeros(())}, make_mesh(), base_key(0, "sample")
  draw = lambda: np.asarray(make_sampler(build(config, model), mesh, sampler="ddim", steps=20)(
      variables, key, 0, np.zeros(64, np.int32)))
  assert not clip_x0(config)
  np.testing.assert_allclose(draw().mean(), 3.0, atol=0.05)
  config.diffusion.clip_x0 = True
  assert draw().max() <= 1.0 + 1e-5
  images = config_for(shape=(4, 4, 1), dtype="uint8")
  del images.diffusion["clip_x0"]
  assert clip_x0(images)


def test_a_sampler_refuses_labels_outside_the_models_classes():
  """A 3-class model takes labels 0..3 (3: the null class); 4, -1 or 2.5 would index past
  its class embedding (NaN samples, or a class wrapped around) and are refused, as is a call
  that says nothing of how many samples to draw."""
  from diffusion.sampling import make_sampler
  config = config_for(shape=(4, 1), kind="sequence", dtype="float32", scale=1.0)
  model = models.function(lambda params, x, t, y: jnp.zeros_like(x), params=jnp.zeros(()),
                          num_classes=3)
  sample = make_sampler(build(config, model), make_mesh(), sampler="ddim", steps=2)
  variables, key = {"params": jnp.zeros(())}, base_key(0, "sample")
  assert np.isfinite(np.asarray(sample(variables, key, 0, np.array([0, 1, 2, 3] * 2)))).all()
  for bad in (np.array([0, 4] * 4), np.array([-1, 0] * 4), np.full(8, 2.5)):
    with pytest.raises(ValueError, match=r"labels must be ints in \[0, 3\]"):
      sample(variables, key, 0, bad)
  with pytest.raises(ValueError, match="give labels"):
    sample(variables, key, 0)
  # Guidance needs the null class, which only label dropout trains, and a scale >= 0.
  with pytest.raises(ValueError, match="trained with config.train.label_dropout = 0"):
    make_sampler(build(config, model), make_mesh(), sampler="ddim", steps=2, guidance=2.0)
  config.train.label_dropout = 0.1
  with pytest.raises(ValueError, match="`guidance` must be a scale w >= 0"):
    make_sampler(build(config, model), make_mesh(), sampler="ddim", steps=2, guidance=-3.0)
  make_sampler(build(config, model), make_mesh(), sampler="ddim", steps=2, guidance=2.0)


def test_the_applications_run_in_batches_and_give_the_same_answer_whatever_the_batch():
  """24 examples at once, or 8 at a time (3 batches and a progress bar): each example draws
  its noise from its own key, so the results are the same; the data repeat every 8 examples,
  so that a batch reusing another's keys would repeat its results too."""
  config = config_for(shape=(8, 1), kind="sequence", dtype="float32", scale=1.0)
  model = gaussian_denoiser(config, np.zeros((8, 1)), correlated(8))
  variables, mesh, key = {"params": jnp.zeros(())}, make_mesh(), base_key(0, "sample")
  data = np.tile(np.random.default_rng(0).normal(size=(8, 8, 1)), (3, 1, 1)).astype(np.float32)
  mask = np.arange(8) < 4
  runs = {
      "denoise": lambda b: denoise(build(config, model), variables, data, 0.3, mesh, key,
                                   sampler="ddim", steps=5, batch=b),
      "inpaint": lambda b: inpaint(build(config, model), variables, data, mask, mesh, key, steps=6,
                                   jump_length=2, resamplings=2, batch=b),
      "anomaly": lambda b: anomaly_scores(build(config, model), variables, data, mesh, key,
                                          at_step=20,
                                          sampler="ddim", steps=5, batch=b)[2],
      "enhance": lambda b: enhance(build(config, gaussian_denoiser(config, None, 0.01 * np.eye(8),
                                                                   cond_channels=1)),
                                   variables, data, mesh, key, sampler="ddim", steps=5, batch=b),
  }
  for name, run in runs.items():
    whole, parts = run(256), run(8)
    assert whole.shape == parts.shape == data.shape, name
    np.testing.assert_allclose(parts, whole, atol=1e-5, err_msg=name)
    assert np.abs(whole[:8] - whole[8:16]).max() > 1e-3, name  # other keys, other noise


def test_samples_that_are_not_finite_are_refused_before_they_become_pixels():
  """`ddpm sample`'s draw: NaN samples were turned into black pixels and written. Here a
  network of NaN for class 1 makes half of 8 digits NaN; the draw is refused naming how many
  (uint8 data: the conversion would have hidden them)."""
  from diffusion.sample_run import draw_samples
  config = tiny_config()
  config.diffusion.num_steps = T
  model = models.function(lambda params, x, t, y: jnp.where(y[:, None, None, None] == 1,
                                                            jnp.nan, 0.0) * x,
                          params=jnp.zeros(()), num_classes=2)
  labels = np.arange(8) % 2
  with pytest.raises(ValueError, match=r"^4 of 8 samples are not finite \(NaN or inf\)"):
    draw_samples(build(config, model), labels, variables={"params": jnp.zeros(())},
                 sampler="ddim", steps=3,
                 batch=4)
  ok = draw_samples(build(config, model), labels * 0, variables={"params": jnp.zeros(())},
                    sampler="ddim", steps=3)
  assert ok.dtype == np.uint8 and ok.shape == (8, 8, 8, 1)
