"""`ddpm distill`: a few-step student of a trained run, written as a run folder of its own.

The student's config is the teacher's (data, network, diffusion) with the
`optim`, `train` and `distill` sections of a distillation config
(experiments/configs/distill_digits.py, consistency_digits.py, ...); its network
starts from the teacher's EMA parameters, which the state also keeps, frozen,
as the teacher (`Method.extra`): a resumed distillation continues from its own
checkpoints, bit for bit, whatever the teacher's run has done since, and
without it if its folder is gone. `ddpm sample` reads the student's
folder like any run and samples with its own chain.
"""

import logging
import os

import ml_collections

from diffusion import methods, paths
from diffusion.runs import Checkpoints, IncompatibleResume, load_run
from diffusion.training.loop import train

log = logging.getLogger(__name__)



def distilling() -> tuple[str, ...]:
  """The methods that distil a teacher (`Method.needs_teacher`), registered ones included."""
  return tuple(name for name, cls in methods.REGISTRY.items() if cls.needs_teacher)


def _method(name: str):
  """The class of a distilling method, or a ValueError naming `method`."""
  if name not in distilling():
    raise ValueError(f"`method` must be one of {', '.join(distilling())}; got {name!r}")
  return methods.get(name)
SECTIONS = ("optim", "train", "distill")


def student_config(teacher: ml_collections.ConfigDict, settings: ml_collections.ConfigDict,
                   method: str, steps: int | None = None, teacher_steps: int | None = None
                   ) -> ml_collections.ConfigDict:
  """The teacher's config with the `optim`, `train` and `distill` sections of `settings` (and
  the keys of its `model` section, if any, e.g. dropout), `method` and the step counts filled
  in, and then the method's own settings of its student (`Method.student_config`: a
  progressive student predicts v and trains rounds x round_steps steps, its lr annealed to 0
  in each round; a consistency model keeps the teacher's prediction type as the teacher's
  only, its network's output being F of `consistency.py`)."""
  cls = _method(method)
  for section in SECTIONS:
    if section not in settings:
      raise ValueError(f"the distillation config has no `{section}` section (see "
                       "experiments/configs/distill_digits.py)")
  config = ml_collections.ConfigDict(teacher.to_dict())
  with config.unlocked():
    for section in SECTIONS:
      config[section] = ml_collections.ConfigDict(settings[section].to_dict())
    if "model" in settings:  # e.g. a student without the teacher's dropout
      for key, value in settings.model.items():
        if key not in config.model:
          raise ValueError(f"the distillation config's model.{key} is no key of the teacher's "
                           "network config")
        config.model[key] = value
    d = config.distill
    d.method = method
    d.teacher_prediction = teacher.diffusion.prediction
    if steps is not None:
      d.steps = steps
    if teacher_steps is not None:
      d.teacher_steps = teacher_steps
    config.train.label_dropout = 0.0
    missing = [k for k in cls.keys if k not in d]
    if missing:
      raise ValueError(f"`method` {method}: the distillation config's distill section has no "
                       f"{', '.join(missing)} (a config for it: experiments/configs/{cls.example})")
    cls.student_config(config)
  return config


def distill(workdir: str, out: str, settings: ml_collections.ConfigDict, *, method: str,
            steps: int | None = None, teacher_steps: int | None = None,
            step: int | None = None, model=None, source=None) -> int:
  """Distils the run in `workdir` (its EMA parameters at `step`, default the newest) into a
  student in `out` by `method` ("progressive" or "consistency"); resumes a student already
  there. Returns the student's step. Bad input (a workdir that is no trained run, a student as
  teacher, step counts that do not fit) raises ValueError naming the argument before anything
  compiles. `model` and `source` are the teacher's network and data when the config cannot
  name them (a run trained with `train(config, workdir, model=..., source=...)` in Python);
  the student is the same network."""
  if os.fspath(paths.resolve(workdir, "`workdir`")) == os.fspath(paths.resolve(out, "`out`")):
    raise ValueError("`out` must differ from `workdir` (the teacher's run is read, not written)")
  _method(method)
  if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
    raise ValueError(f"`steps` must be a positive int; got {steps!r}")
  saved = _saved_config(out)
  if saved is not None and not methods.get(methods.name_of(saved)).needs_teacher:
    raise ValueError(f"`out` {out!r} holds a training run, not a few-step student: choose a new "
                     "`out`")
  teacher_dir = paths.resolve(workdir, "`workdir`")
  if saved is not None and not (teacher_dir / "checkpoints").exists():
    # The student's checkpoints hold its teacher (and everything else it needs).
    log.info("%s is gone: resuming %s from its own checkpoints", workdir, out)
    config, variables = _teacher_config(saved), None
  else:
    config, _, variables, teacher_step = load_run(workdir, step, model=model)
    if not methods.get(methods.name_of(config)).every_timestep:
      raise ValueError(f"`workdir` {workdir!r} is itself a few-step model (method "
                       f"{methods.name_of(config)!r}): distil from its teacher")
  student = student_config(config, settings, method, steps, teacher_steps)
  with student.unlocked():  # a resumed student keeps the teacher it was started from
    student.distill.teacher = (saved.distill.get("teacher") if saved is not None
                               else f"{os.fspath(teacher_dir)}@{teacher_step}")
  log.info("distilling %s into %s: %s", student.distill.teacher, out, method)
  try:
    return train(student, out, variables=variables, model=model, source=source)
  except IncompatibleResume as e:  # the student's folder is --out here
    raise IncompatibleResume(str(e).replace("`workdir`", "`out`")) from None


def _saved_config(out: str) -> ml_collections.ConfigDict | None:
  """The config of the newest checkpoint in `out`, or None if it holds none."""
  if not (paths.resolve(out, "`out`") / "checkpoints").exists():
    return None
  existing = Checkpoints(out, read_only=True)
  try:
    return existing.restore_config() if existing.all_steps() else None
  finally:
    existing.manager.close()


def _teacher_config(student: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What a student's saved config keeps of its teacher's: all but the sections that
  `student_config` replaces, with the teacher's prediction type."""
  config = ml_collections.ConfigDict(student.to_dict())
  config.diffusion.prediction = student.distill.teacher_prediction
  return config
