"""Training: the state, the sharded step, checkpoints and the loop of `ddpm train`."""

from diffusion.training.checkpoint import Checkpoints, load_run
from diffusion.config import schedule_from_config
from diffusion.training.loop import train
from diffusion.training.state import (
    TrainState, abstract_state, base_key, create_state, make_optimizer, state_shardings)
from diffusion.training.step import make_train_step, shard_batch, timestep_probs

__all__ = ["Checkpoints", "TrainState", "abstract_state", "base_key", "create_state",
           "load_run", "make_optimizer", "make_train_step", "schedule_from_config",
           "shard_batch", "state_shardings", "timestep_probs", "train"]
