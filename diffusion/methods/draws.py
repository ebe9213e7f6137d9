"""What the few-step methods share: per-example draws from per-example keys, and their configs'
common checks."""

import jax


def draws(keys, shape, project, index):
  """Per example: an int `index(key)` and N(0, I) noise of `shape` (projected: point sets
  centred), each from its own key. keys [B] -> (int [B], noise [B, *shape])."""
  def one(key):
    key_i, key_n = jax.random.split(key)
    return index(key_i), project(jax.random.normal(key_n, shape))
  return jax.vmap(one)(keys)


def uniform(low, high):
  """An index sampler for `draws`: uniform on [low, high)."""
  return lambda key: jax.random.randint(key, (), low, high)


def ema(old, new, decay):
  """decay · old + (1 - decay) · new, leaf by leaf."""
  return jax.tree.map(lambda o, n: decay * o + (1 - decay) * n, old, new)


def few_step_config(config, keys, method: str, example: str):
  """config.distill, after checking that it has `keys` (which `method` reads; `example` is a
  config that has them) and that the timesteps are drawn uniformly."""
  d = config.get("distill") or {}
  missing = [k for k in keys if k not in d]
  if missing:
    raise ValueError(f"config.distill has no {', '.join(missing)}, which method {method!r} needs "
                     f"(see experiments/configs/{example})")
  if config.diffusion.get("timestep_sampler", "uniform") != "uniform":
    raise ValueError("config.diffusion.timestep_sampler must be 'uniform' with config.distill")
  return d
