"""Guidance on Gaussian data, where every denoiser is affine and the probability-flow ODE's
end is known by quadrature: classifier-free guidance and autoguidance, whole or limited to an
interval of σ, move the samples' spread as D̃ = D_other + w (D − D_other) says; at w = 1, and
with an interval no level of the chain reaches, the samples are the unguided ones bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from test_flow_edm import MEAN, config_of
from diffusion import edm, models
from diffusion.distributed import make_mesh, replicate
from diffusion.runs import build
from diffusion.sampling import make_sampler

S, S_NULL, S_GUIDE = 0.2, 0.35, 0.5  # the class's std, the null class's, the bad guide's
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def network(params, x_in, c_noise, y=None):
  """EDM's F whose denoiser is E[x_0 | x_0 + σ n] for x_0 ~ N(MEAN, s²) per coordinate: s =
  params["s"], or params["s_null"] for the null class (y = 1)."""
  std = params["s"] if y is None else jnp.where(y == 0, params["s"], params["s_null"])
  col = lambda a: jnp.reshape(a, (-1, 1, 1))
  sigma = jnp.exp(4 * c_noise)
  c_skip, c_out, c_in, _ = edm.preconditioning(sigma, S)
  x = x_in / col(c_in)
  d = MEAN + col(std ** 2 / (std ** 2 + sigma ** 2)) * (x - MEAN)
  return (d - col(c_skip) * x) / col(c_out)


def expected_std(w: float, other: float, interval=(0.0, np.inf)) -> float:
  """The std of x_0 from x = 80 n along dx/dσ = (x − D̃(x; σ)) / σ, D̃ − MEAN = k(σ) (x − MEAN)
  with k = w k_S + (1 − w) k_other inside `interval` (k_S outside), ending with the chain's
  last step x_0 = D̃(x; σ_min)."""
  gain = lambda s, sigma: s ** 2 / (s ** 2 + sigma ** 2)
  k = lambda sigma: (w * gain(S, sigma) + (1 - w) * gain(other, sigma)
                     if interval[0] <= sigma <= interval[1] else gain(S, sigma))
  points = [p for p in interval if SIGMA_MIN < p < SIGMA_MAX]
  log = integrate.quad(lambda u: 1 - k(np.exp(u)), np.log(SIGMA_MIN), np.log(SIGMA_MAX),
                       points=[np.log(p) for p in points] or None, limit=200)[0]
  return SIGMA_MAX * np.exp(-log) * k(SIGMA_MIN)


@pytest.fixture(scope="module")
def chains():
  """sample(guidance, interval, guide) -> x_0 [4096, 4, 1]: Heun over 64 levels of σ."""
  config = config_of("edm", label_dropout=0.1)
  with config.unlocked():
    config.edm = {"sigma_data": S, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}
  main = models.function(network, params={}, num_classes=1)
  run = build(config, main)
  variables = {"params": {"s": S, "s_null": S_NULL}}
  labels = np.zeros(4096, np.int32)

  def sample(guidance=None, interval=None, guide=False):
    fn = make_sampler(run, make_mesh(), sampler="heun", steps=64, guidance=guidance,
                      guidance_interval=interval, guide=main if guide else None)
    extra = {"guide_variables": {"params": {"s": S_GUIDE, "s_null": S_GUIDE}}} if guide else {}
    return np.asarray(fn(variables, jax.random.key(0), 0, labels, **extra), np.float64)
  return sample


def test_unguided_and_w_1_and_an_interval_never_reached_are_the_conditional_model(chains):
  plain = chains()
  assert plain.std() == pytest.approx(expected_std(1.0, S), rel=0.03)
  assert plain.std() == pytest.approx(S, rel=0.03)
  np.testing.assert_array_equal(chains(guidance=1.0), plain)
  np.testing.assert_array_equal(chains(guidance=1.0, guide=True), plain)
  np.testing.assert_array_equal(chains(guidance=3.0, interval=(100.0, 200.0)), plain)
  np.testing.assert_array_equal(chains(guidance=3.0, interval=(100.0, 200.0), guide=True), plain)


@pytest.mark.parametrize("guide", [False, True])
@pytest.mark.parametrize("interval", [None, (0.3, 5.0)])
def test_guidance_moves_the_spread_as_its_formula_says(chains, guide, interval):
  w, other = 2.0, (S_GUIDE if guide else S_NULL)
  x = chains(guidance=w, interval=interval, guide=guide)
  want = expected_std(w, other, interval or (0.0, np.inf))
  assert x.std() == pytest.approx(want, rel=0.03), (x.std(), want)
  assert abs(want / S - 1) > 0.1  # guidance moved it
  assert x.mean() == pytest.approx(MEAN, abs=0.01)
  if interval is not None:  # and the interval mattered
    assert abs(expected_std(w, other) / want - 1) > 0.1


def test_each_method_maps_its_conditioning_back_to_its_noise_level():
  """`noise_sigma` (what an interval is measured in) inverts `conditioning` on the path's
  σ/α, for the continuous methods, and is sqrt(1/ᾱ_t − 1) of a DDPM's timestep."""
  for name in ("flow", "edm"):
    method = build(config_of(name), models.function(network, params={})).method
    for level in (0.05, 0.5, 0.9) if name == "flow" else (0.01, 1.0, 50.0):
      alpha, sigma = method.path(level)
      got = float(method.noise_sigma(method.conditioning(jnp.full((2,), level)))[0])
      assert got == pytest.approx(sigma / alpha, rel=1e-5)
  method = build(config_of("ddpm"), models.function(network, params={})).method
  alpha_bar = np.cumprod(1 - np.asarray(method.diffusion.schedule.betas, np.float64))
  t = jnp.asarray([0, 7, 19])
  np.testing.assert_allclose(method.noise_sigma(t), np.sqrt(1 / alpha_bar[[0, 7, 19]] - 1),
                             rtol=1e-5)


class Labelled:
  """Gaussian examples with a class label (all class 0)."""
  num_classes = 1

  def __len__(self):
    return 64

  def __getitem__(self, i):
    rng = np.random.default_rng(i)
    return {"x": (MEAN + S * rng.normal(size=(4, 1))).astype(np.float32), "label": 0}


def test_a_guide_run_is_checked_and_guides_through_draw_samples(tmp_path):
  """`load_guide` refuses a run of another method in one line; `draw_samples` with a guide run
  is `make_sampler`'s autoguidance with that run's variables."""
  from diffusion.runs import base_key, load_run
  from diffusion.sample_run import draw_samples, load_guide
  from diffusion.training import train
  net = lambda: models.function(network, params={"s": S, "s_null": S_NULL}, num_classes=1)
  runs = {}
  for name, method, steps in (("main", "edm", 4), ("guide", "edm", 2), ("flow", "flow", 2)):
    config = config_of(method, label_dropout=0.1, num_steps=steps)
    with config.unlocked():
      config.edm = {"sigma_data": S}
    train(config, str(tmp_path / name), model=net(), source=Labelled())
    runs[name] = load_run(str(tmp_path / name), model=net())
  with pytest.raises(ValueError, match="holds a model of another method"):
    load_guide(runs["main"], str(tmp_path / "flow"), model=net())
  assert load_guide(runs["main"], str(tmp_path / "guide"), model=net()).step == 2
  labels = np.zeros(8, np.int32)
  got = draw_samples(runs["main"], labels, sampler="heun", steps=4, guidance=2.0,
                     guide=runs["guide"])
  fn = make_sampler(runs["main"], make_mesh(), sampler="heun", steps=4, guidance=2.0,
                    guide=runs["guide"].model)
  mesh = make_mesh()
  want = fn(replicate(runs["main"].variables, mesh), base_key(0, "sample"), 0, labels,
            guide_variables=replicate(runs["guide"].variables, mesh))
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)
  unguided = draw_samples(runs["main"], labels, sampler="heun", steps=4)
  assert not np.allclose(got, unguided)  # the guide (trained less) differs from the main run
