"""What several commands share: config overrides, the sampler options, a figures report."""

import argparse
import json
import os
import sys


def seed(text: str) -> int:
  """argparse's type for --seed: an int in [0, 2^63) (what jax.random.key takes)."""
  from diffusion import _checks
  try:
    return _checks.seed(int(text))
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be an int in [0, 2**63 - 1]; got {text!r}") from None


def config_with_overrides(path: str, overrides: list[str]):
  """The config file with `--config.a.b=value` overrides applied (ml_collections syntax); a
  ValueError of one line for a missing or broken file or a bad override (exit status 2, as
  every other bad input)."""
  from absl import flags
  from ml_collections import config_flags
  if os.path.isdir(path):
    raise ValueError(f"--config {path!r} is a folder; give a config file "
                     "(experiments/configs/*.py)")
  if not os.path.isfile(path):
    raise ValueError(f"--config {path!r} does not exist")
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise ValueError(f"unrecognized arguments: {' '.join(bad)}")
  # ml_collections loads every config file as the module "config_config" with the deprecated
  # load_module(), which runs a file in the module of the one loaded before, if any: a file
  # without get_config() would then return the earlier file's config.
  sys.modules.pop("config_config", None)
  values = flags.FlagValues()
  argv = ["ddpm", f"--config={path}", *overrides]
  config_flags.DEFINE_config_file("config", path, "experiment config", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise ValueError(f"{e}") from None
  except (KeyError, AttributeError) as e:  # ml_collections, for a key the config lacks
    raise ValueError(f"{_missing_key(e, path, overrides)}") from None
  except SyntaxError as e:
    raise ValueError(f"--config {path!r} line {e.lineno}: {e.msg}") from None
  except Exception as e:  # an error of the config file's own code
    raise ValueError(f"--config {path!r} failed: {type(e).__name__}: {e}") from None
  return values.config


def _missing_key(error: BaseException, path: str, overrides: list[str]) -> str:
  """One line for ml_collections' KeyError/AttributeError (an override's key the config lacks,
  with its own "Did you mean" suggestion), or a config file without get_config()."""
  while error.args and isinstance(error.args[0], BaseException):  # a KeyError in an AttributeError
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  if "has no attribute 'get_config'" in text:
    return f"--config {path!r} defines no get_config() (the function that returns the config)"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  key = lines[0].strip("'\"") if lines else text
  override = next((o.split("=", 1)[0] for o in overrides
                   if key in o.split("=", 1)[0].split(".")), None)
  where = f"{override}: " if override else ""
  hint = f"; {lines[1][:1].lower()}{lines[1][1:]}" if len(lines) > 1 else ""
  return f"{where}the config has no key {key!r}{hint}"


def sampler_arguments(parser: argparse.ArgumentParser, guidance: bool = True) -> None:
  """--sampler and --steps; with `guidance` also --eta, --spacing, --churn and --guidance."""
  parser.add_argument("--sampler",
                      help="ddpm (ancestral), ddim, dpm++, heun or edm-sde (EDM's samplers); "
                           "default: ddpm, or a few-step model's own (ddim for a progressive "
                           "student, consistency for a consistency model). A flow-matching or "
                           "EDM run: euler (its default 50 steps for flow matching), heun "
                           "(18: EDM's), ddim (= euler there), dpm++ or edm-sde, over "
                           "continuous noise levels")
  parser.add_argument("--steps", type=int,
                      help="timesteps visited (default: all for ddpm, 50 for ddim, 20 for dpm++, "
                           "18 for heun, 40 for edm-sde; heun and edm-sde evaluate the network "
                           "2 steps - 1 times)")
  if not guidance:
    return
  parser.add_argument("--eta", type=float, default=0.0, help="DDIM's η in [0, 1]")
  parser.add_argument("--spacing", help="uniform, quadratic, logsnr or karras (default: logsnr "
                                        "for dpm++, karras for heun/edm-sde, else uniform)")
  parser.add_argument("--churn", type=float,
                      help="edm-sde's S_churn (default 30, EDM's for VP models)")
  parser.add_argument("--guidance", type=float,
                      help="classifier-free guidance scale w (class-conditional models trained "
                           "with label dropout), or with --guide-workdir the autoguidance "
                           "weight w")


def report(args: argparse.Namespace, result: dict, table: str) -> None:
  """Prints `table`; with --json also writes `result` (and the config's path) there."""
  result["config"] = args.config
  print(table)
  if args.json:
    from diffusion import paths
    paths.write_bytes(paths.resolve(args.json, "--json"), json.dumps(result, indent=2).encode())
