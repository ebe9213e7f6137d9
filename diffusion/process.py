"""`Diffusion`: one run's forward process and how its network's output is read, made once.

The schedule (float64 betas [T] and the `Schedule` of their tables), what the
network predicts ("eps", "x0" or "v"), its reverse variance, whether x̂_0 is
clipped to [-1, 1], and the data (`DataSpec`). The library's samplers, train
step, applications and evaluations take one of these instead of a config;
`config.diffusion_of(config)` builds it from a config file's sections.
"""

import dataclasses

import numpy as np

from diffusion import _checks
from diffusion.dataspec import DataSpec
from diffusion.schedules import Schedule


@dataclasses.dataclass(frozen=True, eq=False)
class Diffusion:
  betas: np.ndarray            # float64 [T]
  prediction: str = "eps"
  variance: str = "fixed_small"
  clip_x0: bool = True         # clip x̂_0 to [-1, 1] while sampling (uint8 data's model units)
  spec: DataSpec | None = None  # one example's shape, kind, dtype and units
  schedule: Schedule = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    _checks.choice(self.prediction, _checks.PREDICTIONS, "prediction")
    _checks.choice(self.variance, _checks.VARIANCES, "variance")
    object.__setattr__(self, "betas", np.asarray(self.betas, np.float64))
    object.__setattr__(self, "schedule", Schedule.from_betas(self.betas))

  @classmethod
  def from_schedule(cls, schedule: Schedule, **fields) -> "Diffusion":
    """The process of a given Schedule (its float32 tables kept as they are; `betas` holds its
    betas in float64, for respacing)."""
    if not isinstance(schedule, Schedule):
      raise TypeError(f"schedule must be a diffusion Schedule (Schedule.from_betas(betas)); got "
                      f"{type(schedule).__name__}")
    diffusion = cls(np.asarray(schedule.betas, np.float64), **fields)
    object.__setattr__(diffusion, "schedule", schedule)
    return diffusion

  @property
  def num_steps(self) -> int:
    """T."""
    return len(self.betas)

  @property
  def learned_variance(self) -> bool:
    return self.variance in _checks.LEARNED_VARIANCES

  def key(self) -> tuple:
    """What identifies this process (for caching the programs built on it)."""
    return (self.betas.tobytes(), self.prediction, self.variance, bool(self.clip_x0), self.spec)

  def __eq__(self, other):
    return isinstance(other, Diffusion) and self.key() == other.key()

  def __hash__(self):
    return hash(self.key())

  def replace(self, **changes) -> "Diffusion":
    return dataclasses.replace(self, **changes)
