"""The `ddpm` command (also `python -m diffusion`): each command's parser lives beside its runner
(`runs.py`, `applications.py`, `convert.py`, `bench.py`, `plan.py`); this module parses and
reports bad input."""

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from diffusion.cli import applications, bench, convert, ema, plan, runs


class _Parser(argparse.ArgumentParser):
  """argparse, with a command's mistakes (`--num abc`, a missing argument) in one line."""

  def error(self, message: str):
    if self.prog == "ddpm":  # no command, or an unknown one: the usage lists them
      self.print_usage(sys.stderr)
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
  """The `ddpm` parser and each command's, by name."""
  top = _Parser(prog="ddpm", description="Denoising diffusion probabilistic models in JAX.")
  commands = top.add_subparsers(dest="command", required=True)
  for module in (runs, ema, applications, convert, bench, plan):
    module.add_parsers(commands)
  return top, commands.choices


def main(argv: Sequence[str] | None = None) -> int:
  parser_, commands = parser()
  args, extra = parser_.parse_known_args(argv)
  command = commands[args.command]
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  if extra and not getattr(args, "takes_overrides", False):
    parser_.error(f"unrecognized arguments: {' '.join(extra)}")
  args.overrides = extra
  # Bad input: a one-line message and exit status 2. For the other commands that includes
  # unreadable files (OSError); a training run's I/O failures (a failed checkpoint save) keep
  # their traceback, but for a full disk, which the user must mend.
  from diffusion.paths import StorageFull
  bad_input = ((ValueError, FileNotFoundError, FileExistsError, StorageFull)
               if getattr(args, "engine", False) else (ValueError, OSError, ImportError))
  try:
    from diffusion import distributed
    distributed.skip_absent_tpu()
    if not args.command.startswith(("bench", "plan")):  # these time compilation: never cached
      distributed.use_compilation_cache()
    _check_paths(args)
    status = args.run(args)
  except bad_input as e:
    print(f"ddpm {args.command}: error: {as_flags(str(e), command, args)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"ddpm {args.command}: interrupted", file=sys.stderr)
    return 130
  return status if getattr(args, "returns_status", False) else 0


def as_flags(message: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
  """A library error as the command's user reads it: the Python parameters it names in
  backquotes (`steps`) become the command's flags (--steps), by the parser's destinations
  (and the command's `flag_names`, where a flag feeds a parameter of another name)."""
  flags = {}
  for action in parser._actions:
    longs = [o for o in action.option_strings if o.startswith("--")]
    if longs:
      flags.setdefault(action.dest, longs[0])
  flags.update(getattr(args, "flag_names", {}))
  return re.sub(r"`(\w+)`", lambda m: flags.get(m.group(1), m.group(0)), message)


def _check_paths(args: argparse.Namespace) -> None:
  """The command's inputs exist and its outputs can be written, before any work: the
  parsers name them in `inputs` and `outputs` (argument names; outputs as (name, is_folder),
  or a function of the arguments giving those), and in `writes` (a function of the arguments
  giving (what, path) of every file written): none may be an input or another output."""
  from diffusion import paths
  flag = lambda name: "--" + name.replace("_", "-")
  for name in getattr(args, "inputs", ()):
    if getattr(args, name, None) is not None:
      paths.check_input(getattr(args, name), flag(name))
  outputs = getattr(args, "outputs", ())
  for name, folder in outputs(args) if callable(outputs) else outputs:
    if getattr(args, name, None) is not None:
      paths.check_output(getattr(args, name), flag(name), folder=folder)
  if getattr(args, "writes", None):  # every file the command writes, side files included
    paths.check_distinct(args.writes(args), [(flag(name), getattr(args, name, None))
                                             for name in getattr(args, "inputs", ())])


if __name__ == "__main__":
  sys.exit(main())
