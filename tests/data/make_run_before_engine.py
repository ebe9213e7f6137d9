"""How tests/data/run_before_engine and samples_before_engine.npz were made, with the engine
before its redesign (commit 3b7c1f8, whose API this script uses): an affine network per timestep
on N(0.3, 0.2²) data of shape (4, 1), T = 20, trained 2 steps; and 8 DDIM samples of it.

  git worktree add /tmp/before 3b7c1f8
  PYTHONPATH=/tmp/before python tests/data/make_run_before_engine.py \
      experiments/configs/digits.py RUN SAMPLES.npz

(then only RUN/checkpoints/2 is kept). tests/test_extending.py loads, samples and resumes it.
"""
import sys
import jax, jax.numpy as jnp, numpy as np
import diffusion
from diffusion import models
from diffusion.config import load_config
from diffusion.training import train, load_run
from diffusion.sample_run import draw_samples

T, SHAPE, MEAN, STD = 20, (4, 1), 0.3, 0.2

def affine(params, x, t):
  return jnp.asarray(params["a"])[t] * x + jnp.asarray(params["b"])[t]

def start():
  return {"a": jnp.full((T, *SHAPE), 0.5), "b": jnp.zeros((T, *SHAPE))}

class Gaussian:
  def __len__(self): return 64
  def __getitem__(self, i):
    return {"x": (MEAN + STD * np.random.default_rng(i).normal(size=SHAPE)).astype(np.float32)}

config = load_config(sys.argv[1])
config.model.update(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), num_groups=4)
config.data.shape, config.data.dtype = SHAPE, "float32"
config.diffusion.num_steps, config.diffusion.clip_x0 = T, False
config.optim.update(lr=1e-2, warmup_steps=0, decay_steps=0)
config.train.update(num_steps=2, batch_size=16, log_every=1, checkpoint_every=2, sample_every=100,
                    num_samples=0, ema_decay=0.5)
workdir = sys.argv[2]
model = models.function(affine, params=start(), name="(affine)")
print(train(config, workdir, model=model, source=Gaussian()))
config, model, variables, step = load_run(workdir, model=models.function(affine, params=start()))
x = draw_samples(config, model, variables, np.zeros(8, int), sampler="ddim", steps=5)
np.savez(sys.argv[3], arr_0=x)
print(step, x.ravel()[:4])
