"""Training: the state, the sharded step, the loop of `ddpm train` and `distill`.

`load_run`, `Checkpoints` and `base_key` belong to `diffusion.runs` (the run folder, which
sampling and evaluation read without training); they are re-exported here for training code."""

from diffusion.methods import timestep_probs
from diffusion.runs import Checkpoints, base_key, load_run
from diffusion.training.loop import train
from diffusion.training.state import (
    TrainState, abstract_state, create_state, make_optimizer, state_shardings)
from diffusion.training.step import make_train_step, shard_batch

__all__ = ["Checkpoints", "TrainState", "abstract_state", "base_key", "create_state",
           "load_run", "make_optimizer", "make_train_step", "shard_batch", "state_shardings",
           "timestep_probs", "train"]
