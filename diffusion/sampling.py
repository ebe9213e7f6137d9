"""Sampling from a trained network: a chain of `diffusion.samplers`, sharded over a mesh.

Sample i of a request draws all of its noise from fold_in(key, i), so the
samples do not depend on how they are split into batches or devices: the same
seed gives the same samples.
"""

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion import platforms, samplers
from diffusion.distributed import BATCH, gather, padded
from diffusion.models import Denoiser, as_denoiser


def check_options(model, num_steps: int, *, steps: int | None, spacing: str | None,
                  guidance: float | None) -> None:
  """The options every sampler takes, checked before anything compiles (each sampler checks
  its own, e.g. DDIM's `eta`, when it is made: `samplers.make`)."""
  model = as_denoiser(model)
  if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= num_steps):
    raise ValueError(f"`steps` must be an int in [1, {num_steps}] (the model's T); got {steps!r}")
  if spacing is not None and spacing not in samplers.SPACINGS:
    raise ValueError(f"`spacing` must be one of {', '.join(samplers.SPACINGS)}; got {spacing!r}")
  if guidance is not None and not model.num_classes:
    raise ValueError("`guidance` needs a class-conditional model (trained with num_classes > 0 "
                     "and label dropout); this one is unconditional")
  if guidance is not None and not guidance >= 0:
    raise ValueError(f"`guidance` must be a scale w >= 0 (ε(∅) + w (ε(y) - ε(∅)): 1 is the "
                     f"conditional model alone, 0 the unconditional one); got {guidance!r}")


def needs_ddpm(run, what: str) -> None:
  """A ValueError for `what` (an application, the bound) on a run whose method trains on
  continuous noise levels: it is written for a discrete DDPM's forward process."""
  if getattr(run.method, "continuous", False):
    raise ValueError(f"{what} is written for a discrete DDPM's forward process; this run's "
                     f"method {run.method.name!r} trains on continuous noise levels")


def make_chain(method, sampler: str | samplers.Sampler | None = None, *, eta: float = 0.0,
               churn: float | None = None) -> samplers.Sampler:
  """The Sampler named `sampler` (a registered name, "package.module:Class" or a Sampler;
  default: the `method`'s own, `Method.default_sampler`) with its options: DDIM's `eta` (0: not
  given), EDM-SDE's S_churn `churn`. The name is looked up among the continuous chains for a
  method trained on continuous noise levels (flow matching, EDM), among the discrete ones
  otherwise. A sampler of one kind of model only (the consistency models' chain) gets the
  method's settings (`Method.sampler_options`), and is refused for the runs of other methods."""
  own, continuous = method.default_sampler, method.continuous
  sampler = own if sampler is None else sampler
  cls = (type(sampler) if isinstance(sampler, samplers.Sampler)
         else samplers.get(sampler, continuous))
  if cls.own_only and cls.name != own:
    raise ValueError(f"`sampler` {cls.name!r} needs {cls.needs or 'a model of its own kind'}")
  if cls.continuous != continuous:
    raise ValueError(f"`sampler` {cls.name!r} is a {'continuous' if cls.continuous else 'discrete'}"
                     f" chain; method {method.name!r} samples with "
                     f"{'continuous' if continuous else 'discrete'} ones")
  if isinstance(sampler, samplers.Sampler):
    return samplers.make(sampler, eta=eta or None, churn=churn)
  options = {"eta": eta or None, "churn": churn}
  if cls.own_only:
    options.update(method.sampler_options())
  return samplers.make(sampler, continuous, **options)


def class_labels(run, num: int, class_label: int | None, *, default: str = "null"
                 ) -> np.ndarray:
  """The classes `num` samples are conditioned on: int32 [num] (zeros, which the network
  ignores, for an unconditional model).

  `class_label` C gives class C to all. Without it, `default` "cycle" draws
  the classes in turn (balanced), and "null" conditions on the null class
  (unconditional), which exists only if the run was trained with label
  dropout (its method's `label_dropout` > 0): otherwise a class must be named.
  """
  model = run.model
  if not model.num_classes:
    if class_label is not None:
      raise ValueError("`class_label` needs a class-conditional model; this one is unconditional")
    return np.zeros(num, np.int32)
  if class_label is not None:
    if not 0 <= class_label < model.num_classes:
      raise ValueError(f"`class_label` must lie in [0, {model.num_classes}); got {class_label}")
    return np.full(num, class_label, np.int32)
  if default == "cycle":
    return np.arange(num, dtype=np.int32) % model.num_classes
  if not run.method.label_dropout > 0:
    raise ValueError(f"the model is class-conditional ({model.num_classes} classes) and was "
                     "trained without label dropout, so it has no unconditional mode: pass "
                     f"`class_label` C with C in [0, {model.num_classes})")
  return np.full(num, model.num_classes, np.int32)  # the null class


PROGRAMS_KEPT = 16  # the builds `memoized` keeps (their compiled programs stay with them)
_programs: collections.OrderedDict = collections.OrderedDict()


def _frozen(value):
  """`value` as a hashable key part that tells apart what compares equal across types
  (1, 1.0 and True; an array and its list). Raises TypeError for what cannot be hashed."""
  if isinstance(value, np.ndarray):
    return ("ndarray", value.dtype.str, value.shape, value.tobytes())
  if isinstance(value, (list, tuple)):
    return (type(value).__name__,) + tuple(_frozen(v) for v in value)
  hash(value)
  return (type(value).__name__, value)


def _model_key(model):
  """What identifies a network's behaviour: a Denoiser by its functions and attributes (the
  registry's Linen networks share their functions between equal modules, so each checkpoint
  `load_run` reads shares one program, while a Denoiser with another apply_fn does not); any
  other network by the object itself."""
  if isinstance(model, Denoiser):
    try:
      return ("denoiser",) + tuple(_frozen(getattr(model, field.name))
                                   for field in dataclasses.fields(model) if field.name != "check")
    except TypeError:
      pass
  return ("object", id(model))


def memoized(build):
  """`build(run, *args, **options) -> fn` for a `runs.Run`, returning the same `fn` for the same
  network (`_model_key`), Diffusion, Method, args and options, so that calling an application
  or a sampler again in one process (a notebook, a research loop, each checkpoint of a run)
  reuses its traced and compiled programs instead of building new ones. The PROGRAMS_KEPT most
  recent builds are kept, each with its network. Arguments that cannot be hashed build afresh."""
  @functools.wraps(build)
  def wrapper(run, *args, **options):
    try:
      key = (build.__module__, build.__qualname__, _model_key(run.model), run.diffusion,
             run.method, _frozen(args), _frozen(tuple(sorted(options.items()))))
      hash(key)
    except (AttributeError, TypeError, ValueError):
      return build(run, *args, **options)
    if key in _programs:
      _programs.move_to_end(key)
      return _programs[key][1]
    fn = build(run, *args, **options)
    _programs[key] = (run.model, fn)  # the network is kept so that its id is not reused
    while len(_programs) > PROGRAMS_KEPT:
      _programs.popitem(last=False)
    return fn
  return wrapper


@memoized
def make_sampler(run, mesh: Mesh, *, sampler: str | samplers.Sampler | None = None,
                 steps: int | None = None, eta: float = 0.0, spacing: str | None = None,
                 guidance: float | None = None, start: int | None = None,
                 churn: float | None = None, sigmas=None,
                 guidance_interval: tuple[float, float] | None = None, guide=None):
  """A jitted sampler of a `runs.Run`'s network over the devices of `mesh`:

    sample(variables, key, first_index, labels=None, cond=None, x_start=None,
           guide_variables=None) -> float32 [N, *shape] in the model's units

  runs `sampler` (`make_chain`: a registered name, `samplers.names()`, an
  import path "package.module:Class" or a Sampler; default: the run's own,
  `Method.default_sampler`) over `steps` timesteps (default: the sampler's
  `default_steps`: every step for ddpm, 50 for ddim, 20 for dpm++, 18 for heun,
  40 for edm-sde; `eta` is DDIM's η, `churn` edm-sde's S_churn), spaced by
  `spacing` (default: the sampler's `default_spacing`), from
  x_T ~ N(0, I) or from `x_start` at step `start`. `first_index` numbers the
  batch's first sample within the request; `labels` (int [N]) are classes for
  a class-conditional model, guided with scale `guidance` if given; `cond` is
  the conditioning input of a conditioned model (model units). N must be
  divisible by the number of devices. For point sets (`DataSpec.centred`)
  the chain runs in the subspace of zero centre of mass: x_T and every
  prediction (not the learned variances) are centred, and so are the samples (the network being
  translation-invariant, this equals sampling with centred noise). The run's method gives the
  timesteps (`Method.sampling_steps`): a few-step model visits its own; a consistency model
  those nearest to the noise levels `sigmas` if given. The same arguments give the same
  sampler (`memoized`), so its programs compile once per process.

  Guidance (`samplers.guidance`): with `guide` (a network: autoguidance, Karras et al. 2024)
  `guidance` is the weight w of D_guide + w (D − D_guide), the guide's variables passed to
  each call as `guide_variables` (a weaker model of the same data and conditioning: see
  `check_guide`); without, classifier-free guidance of scale w. `guidance_interval` (low,
  high) limits either to the levels whose EDM σ lies in it (Kynkäänniemi et al. 2024);
  elsewhere, and everywhere at w = 1, only the main model is evaluated.
  """
  model, diffusion, method = run.model, run.diffusion, run.method
  chain = make_chain(method, sampler, eta=eta, churn=churn)
  if guide is not None:
    guide = as_denoiser(guide)
    if guidance is None or not guidance >= 0:
      raise ValueError(f"`guide` (autoguidance) needs `guidance`, its weight w >= 0 (1: the main "
                       f"model alone); got {guidance!r}")
    if (guide.num_classes, guide.cond_channels) != (model.num_classes, model.cond_channels):
      raise ValueError(f"`guide` must take the main model's conditioning: {model.num_classes} "
                       f"classes and {model.cond_channels} conditioning channels; it takes "
                       f"{guide.num_classes} and {guide.cond_channels}")
  check_options(model, diffusion.num_steps, spacing=spacing, steps=None,
                guidance=guidance if guide is None else None)
  if guidance is not None and guide is None and not method.label_dropout > 0:
    raise ValueError("`guidance` mixes in the unconditional model, the null class, which a run "
                     "learns only with label dropout: this one was trained with "
                     "config.train.label_dropout = 0")
  active = None
  if guidance_interval is not None:
    if guidance is None:
      raise ValueError("`guidance_interval` limits guidance to an interval: give `guidance`")
    active = samplers.interval(method.noise_sigma, *map(float, guidance_interval))
  guided = guidance is not None and guidance != 1  # w = 1: the main model alone
  visit = method.sampling_steps(chain, steps, spacing, start, sigmas)
  shape = diffusion.spec.shape
  channels = shape[-1]
  spec = diffusion.spec

  def device_sample(variables, key, index, labels, cond, x_start):
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(index)
    init_keys, chain_keys = keys[:, 0], keys[:, 1]

    main, guide_variables = ((variables["main"], variables["guide"]) if guide is not None
                             else (variables, None))

    def apply(net, net_variables):
      def fn(x, t, y):
        c = None if cond is None else jnp.concatenate([cond] * (x.shape[0] // cond.shape[0]))
        out = net(net_variables, x, t, y if model.num_classes else None, c)
        return spec.project_output(out, x.shape[-1])
      return fn

    model_fn = apply(model, main)
    network = lambda x, t: model_fn(x, t, labels)
    if guided and guide is not None:
      guide_fn = apply(guide, guide_variables)
      network = samplers.autoguidance(network, lambda x, t: guide_fn(x, t, labels), guidance,
                                      channels, active)
    elif guided:
      network = samplers.classifier_free_guidance(model_fn, labels, model.num_classes, guidance,
                                                  channels, active)
    x = x_start if x_start is not None else spec.project(jax.vmap(
        lambda k: jax.random.normal(k, shape))(init_keys))
    return spec.project(samplers.run(chain, network, diffusion, visit, x, chain_keys,
                                     method=method if chain.continuous else None))

  program = over_samples(device_sample, mesh, 3)

  def sample(variables, key, first_index: int, labels=None, cond=None, x_start=None,
             guide_variables=None) -> jax.Array:
    if (guide_variables is None) != (guide is None):
      raise ValueError("`guide_variables` are the variables of the sampler's `guide` (autoguidance)"
                       if guide is not None else
                       "`guide_variables` given to a sampler made without a `guide`")
    if guide is not None:
      variables = {"main": variables, "guide": guide_variables}
    n = next((len(a) for a in (labels, cond, x_start) if a is not None), None)
    if n is None:
      raise ValueError("sample(variables, key, first_index, labels, cond, x_start): give labels "
                       "(int [N]), cond or x_start, whose length is the number of samples")
    if labels is None and model.num_classes:
      raise ValueError("labels are required for a class-conditional model (see class_labels)")
    labels = np.zeros(n, np.int32) if labels is None else _checked_labels(labels, model)
    as_float = lambda a: None if a is None else np.asarray(a, np.float32)
    return program(variables, key, first_index, labels, as_float(cond), as_float(x_start))

  def lower(variables, n: int, guide_variables=None):
    """The program `sample(variables, key, 0, labels[, cond])` runs for n samples (from x_T),
    lowered from the shapes of `variables` (arrays or ShapeDtypeStructs) alone."""
    if guide is not None:
      variables = {"main": variables, "guide": guide_variables}
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    cond = (jax.ShapeDtypeStruct((n, *shape[:-1], model.cond_channels), jnp.float32)
            if model.cond_channels else None)
    return program.lower(variables, jax.eval_shape(jax.random.key, 0), n, labels, cond, None)

  sample.lower = lower
  # The trips of the chain's scan, its network evaluations, and those XLA's cost analysis
  # counts: the scanned step once (`trip_evaluations`) and any step outside the scan (heun's
  # last Euler step).
  sample.loop_trips = len(jax.tree.leaves(
      chain.visits(method if chain.continuous else diffusion, visit))[0])
  sample.evaluations = chain.evaluations(len(visit) - 1 if chain.continuous else len(visit))
  sample.counted_evaluations = sample.evaluations - max(sample.loop_trips - 1, 0) * (
      chain.trip_evaluations)
  return sample


def _checked_labels(labels, model) -> np.ndarray:
  """labels as int32 [N], refused unless they are integers in [0, num_classes] (num_classes:
  the null class) for a class-conditional model; an unconditional one ignores them."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be a 1-D array, one class per sample; got shape {labels.shape}")
  if model.num_classes and labels.size and (
      labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > model.num_classes):
    raise ValueError(f"labels must be ints in [0, {model.num_classes}] (the model's classes, and "
                     f"{model.num_classes} for its null class); got {labels.dtype} in "
                     f"[{labels.min()}, {labels.max()}]")
  return labels.astype(np.int32)


def in_batches(fn, n: int, batch: int, mesh: Mesh, *, desc: str, progress: bool = True,
               unit: str = "example", convert=None):
  """fn(first, rows) -> a result [len(rows), ...] (or a tuple of them) on the mesh, for
  consecutive batches of at most `batch` of n >= 1 examples; the results [n, ...] on the host.

  `rows` are the batch's indices padded cyclically to `batch` (to the device count for a single
  batch), so that every batch has one shape: one compile. `first` numbers the batch's first
  example, from which its keys derive: the results do not depend on `batch`. The next batch
  is dispatched before the last one is copied to the host, so the devices do not wait for the
  copy; `convert` maps each batch's host results (e.g. to uint8) before they are stored. A
  progress bar (`unit`s/s, ETA) shows on process 0.
  """
  if not (isinstance(batch, int) and batch >= 1):
    raise ValueError(f"batch must be a positive int; got {batch!r}")
  batch = max(mesh.size, batch - batch % mesh.size)
  width = batch if n > batch else padded(n, mesh)
  bar = tqdm.tqdm(total=n, desc=desc, unit=unit, disable=not progress or jax.process_index() != 0)
  out, pending = None, None

  def collect(first, count, result):
    nonlocal out
    host = jax.tree.map(lambda a: gather(a)[:count], result)
    host = convert(host) if convert else host
    if out is None:
      out = jax.tree.map(lambda a: np.empty((n, *a.shape[1:]), a.dtype), host)
    jax.tree.map(lambda o, a: o.__setitem__(slice(first, first + count), a), out, host)
    bar.update(count)

  for first in range(0, n, batch):
    count = min(batch, n - first)
    result = fn(first, first + np.arange(width) % count)  # dispatched, not waited for
    if pending:
      collect(*pending)
    pending = (first, count, result)
  if pending:
    collect(*pending)
  bar.close()
  return out


def over_samples(fn, mesh: Mesh, num_per_sample: int):
  """jit(shard_map(fn)) for fn(variables, key, index, *per_sample) -> [n, ...] per-sample results.

  variables and key are replicated; `index` (the samples' numbers in the request,
  from which they derive their keys) and the `num_per_sample` per-sample arrays
  (None allowed) are split over every device (`distributed.BATCH`). Call the result as
  run(variables, key, first_index, *per_sample) with host arrays.
  """
  data, replicated = NamedSharding(mesh, BATCH), NamedSharding(mesh, P())
  specs = (P(), P(), BATCH) + (BATCH,) * num_per_sample
  jitted = jax.jit(jax.shard_map(platforms.traced_for(mesh, fn), mesh=mesh, in_specs=specs,
                                 out_specs=BATCH, check_vma=False))

  def call(variables, key, first_index, *per_sample):
    n = next(len(a) for a in per_sample if a is not None)
    put = lambda a: None if a is None else jax.device_put(a, data)
    index = np.arange(first_index, first_index + n, dtype=np.int32)
    return jitted(variables, key, put(index), *map(put, per_sample))

  def lower(variables, key, n: int, *per_sample):
    """The program `call` runs for n samples, lowered from shapes: variables and key
    (replicated), per_sample [n, ...] (split), as arrays or ShapeDtypeStructs (None allowed)."""
    shaped = lambda a, sharding: None if a is None else jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=sharding)
    return jitted.lower(jax.tree.map(lambda a: shaped(a, replicated), variables),
                        shaped(key, replicated),
                        shaped(jax.ShapeDtypeStruct((n,), jnp.int32), data),
                        *(shaped(a, data) for a in per_sample))

  call.lower = lower
  return call
