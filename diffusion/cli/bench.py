"""`ddpm bench | bench-unet | bench-sampling | bench-data`: speed, beside the PyTorch reference."""

import argparse

from diffusion.cli.common import config_with_overrides, report


def _setup(args: argparse.Namespace, steps: int | None = None):
  """(config, model, sampler names) of a bench command: the config's network in --dtype, and
  --samplers checked at `steps`."""
  from diffusion import models
  from diffusion.config import data_shape
  from diffusion.runs import build
  from diffusion.sampling import check_options, make_chain
  config = config_with_overrides(args.config, args.overrides)
  model_config = dict(config.model)
  if args.dtype:
    model_config["dtype"] = args.dtype
  if getattr(args, "remat", False):
    model_config["remat"] = True
  model = models.build(model_config, data_shape(config))
  names = tuple(n.strip() for n in getattr(args, "samplers", "").split(",") if n.strip())
  for name in names:
    make_chain(build(config, model, check=False).method, name)
    check_options(model, config.diffusion.num_steps, steps=steps, spacing=None, guidance=None)
  return config, model, names


def bench_unet(args: argparse.Namespace) -> None:
  """Times the forward pass and training gradient of a config's network."""
  from diffusion.benchmarks import timing as benchmark
  from diffusion.config import data_shape
  if args.batch < 1 or args.steps < 1:
    raise ValueError("--batch and --steps must be positive")
  config, model, _ = _setup(args)
  result = benchmark.bench_network(model, args.batch, data_shape(config), steps=args.steps)
  report(args, result, benchmark.format_table(result))


def bench_sampling(args: argparse.Namespace) -> None:
  """Times each sampler's whole chain on a config's network (random parameters)."""
  from diffusion.benchmarks import timing as benchmark
  if args.batch < 1 or args.repeats < 1:
    raise ValueError("--batch and --repeats must be positive")
  config, model, names = _setup(args, args.steps)
  result = benchmark.bench_sampling(model, config, args.batch, samplers=names, steps=args.steps,
                                    repeats=args.repeats)
  report(args, result, benchmark.format_sampling_table(result))


def bench(args: argparse.Namespace) -> None:
  """`ddpm bench`: training and sampling speed against the PyTorch reference."""
  import jax
  from diffusion.benchmarks import timing as benchmark
  if args.peak_tflops is not None and not args.peak_tflops > 0:
    raise ValueError(f"--peak-tflops must be > 0; got {args.peak_tflops}")
  config, model, names = _setup(args, args.sample_steps)
  if args.batch < 1 or args.train_steps < 1 or (args.sample_batch is not None
                                                 and args.sample_batch < 1):
    raise ValueError("--batch, --sample-batch and --train-steps must be positive")
  for name, value in (("--batch", args.batch), ("--sample-batch", args.sample_batch)):
    if value is not None and value % jax.device_count():
      raise ValueError(f"{name} must be a multiple of the {jax.device_count()} devices; got {value}")
  torch_reference = not args.no_torch
  if torch_reference:
    try:
      import diffusers  # noqa: F401
      import torch  # noqa: F401
    except ImportError:
      raise ValueError("the PyTorch reference needs torch and diffusers (pip install "
                       "'ddpm-jax[bench]'); or pass --no-torch") from None
    if model.name != "unet":
      raise ValueError(f"the PyTorch reference is diffusers' UNet2DModel, the twin of "
                       f"config.model.name 'unet' only (this is {model.name!r}): pass --no-torch")
    from diffusion.convert import diffusers_config
    diffusers_config(model.module, config.data.image_size, config.data.channels)  # representable?
  result = benchmark.bench(model, config, args.batch, samplers=names,
                           sample_steps=args.sample_steps, sample_batch=args.sample_batch,
                           train_steps=args.train_steps, torch_reference=torch_reference,
                           peak=args.peak_tflops, layers=args.layers)
  report(args, result, benchmark.format_bench(result))


def bench_data(args: argparse.Namespace) -> None:
  """`ddpm bench-data`: images/s of the data pipeline alone, beside the train step's."""
  from diffusion.benchmarks import throughput
  config = config_with_overrides(args.config, args.overrides)
  try:
    workers = tuple(int(w) for w in args.workers.split(","))
  except ValueError:
    raise ValueError(f"--workers must be comma-separated ints; got {args.workers!r}") from None
  result = throughput.bench_data(config, workers=workers, threads=args.threads,
                                 batches=args.batches)
  step, label = args.step_images_per_s, "(--step-images-per-s)"
  if args.step:
    from diffusion import models
    from diffusion.benchmarks import timing as benchmark
    from diffusion.config import data_shape
    shape = data_shape(config)
    timed = benchmark.bench_network(models.build(config.model, shape), config.train.batch_size,
                                    shape, steps=3)
    step, label = timed["train_step"]["images_per_s"], f"on this {timed['platform']}"
    result["train_step"] = timed["train_step"]
  report(args, result, throughput.format_data_table(result, step, label))


def add_parsers(commands) -> None:
  """The bench commands' parsers, on the `ddpm` subparsers `commands`."""
  dtype = dict(choices=["float32", "bfloat16"], help="computation dtype (default: the config's)")
  config = dict(required=True, help="an experiments/configs/*.py file")
  json_ = dict(help="also write the figures to this file")

  parser = commands.add_parser(
      "bench-unet", help="time the network's forward pass and training gradient")
  parser.add_argument("--config", **config)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", **dtype)
  parser.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up")
  parser.add_argument("--json", **json_)
  parser.set_defaults(run=bench_unet, takes_overrides=True, outputs=[("json", False)])

  parser = commands.add_parser(
      "bench", help="training and sampling speed, memory and FLOP utilisation, beside PyTorch")
  parser.add_argument("--config", **config)
  parser.add_argument("--batch", type=int, default=64, help="global training batch")
  parser.add_argument("--dtype", **dtype)
  parser.add_argument("--train-steps", type=int, default=5, help="timed training steps")
  parser.add_argument("--samplers", default="ddpm,ddim,dpm++", help="comma-separated")
  parser.add_argument("--sample-steps", type=int, help="steps for every sampler (default: theirs)")
  parser.add_argument("--sample-batch", type=int, help="samples per chain (default: --batch)")
  parser.add_argument("--peak-tflops", type=float,
                      help="the device's peak TFLOP/s for the FLOP utilisation (known for "
                           "H100/H200/A100/TPUs)")
  parser.add_argument("--remat", action="store_true",
                      help="rematerialise the network's blocks (memory for compute; the table "
                           "shows the memory each choice takes)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--layers", action="store_true",
                      help="also time conv/GroupNorm/swish at each level's shape, JAX vs PyTorch")
  parser.add_argument("--json", **json_)
  parser.set_defaults(run=bench, takes_overrides=True, outputs=[("json", False)],
                      flag_names={"sampler": "--samplers"})

  parser = commands.add_parser(
      "bench-sampling", help="samples/s of each sampler on a config's network")
  parser.add_argument("--config", **config)
  parser.add_argument("--batch", type=int, default=64, help="samples per chain (all devices)")
  parser.add_argument("--samplers", default="ddpm,ddim,dpm++",
                      help="comma-separated (default: all three, each at its default steps)")
  parser.add_argument("--steps", type=int, help="steps for every sampler (default: theirs)")
  parser.add_argument("--dtype", **dtype)
  parser.add_argument("--repeats", type=int, default=1, help="timed chains after the first")
  parser.add_argument("--json", **json_)
  parser.set_defaults(run=bench_sampling, takes_overrides=True, outputs=[("json", False)],
                      flag_names={"sampler": "--samplers"})

  parser = commands.add_parser(
      "bench-data", help="images/s of the data pipeline alone, per worker and in total",
      usage="ddpm bench-data --config FILE [--workers 0,1,2] [--config.KEY=VALUE ...]")
  parser.add_argument("--config", **config)
  parser.add_argument("--workers", default="0,1,2",
                      help="worker process counts to time, comma-separated (0: threads only)")
  parser.add_argument("--threads", type=int, default=8, help="reading threads per process")
  parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
  parser.add_argument("--step", action="store_true",
                      help="also time the config's train step on this machine, for comparison")
  parser.add_argument("--step-images-per-s", type=float, default=2700.0,
                      help="the train step's consumption to compare with (default: the paper's "
                           "2,700 images/s on a TPU v3-8)")
  parser.add_argument("--json", **json_)
  parser.set_defaults(run=bench_data, takes_overrides=True, outputs=[("json", False)])
