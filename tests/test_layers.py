"""The package's layers, read from its source and its imports: the command line in diffusion/cli/
alone, inference without training, and the config read at the boundary only."""

import ast
import io
import pathlib
import re
import subprocess
import sys
import tokenize

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "diffusion"
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts)


def _messages(path: pathlib.Path):
  """(line, text) of the string literals of a module that are not docstrings."""
  source = path.read_text()
  docstrings = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      first = node.body[0] if node.body else None
      if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
          and isinstance(first.value.value, str)):
        docstrings.update(range(first.lineno, first.end_lineno + 1))
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.STRING and token.start[0] not in docstrings:
      yield token.start[0], token.string


def test_the_command_line_lives_in_cli_alone():
  """No module outside diffusion/cli/ imports argparse, and no string of theirs (an error
  message, an argument's label) names a flag of `ddpm`: they name Python parameters, and the
  CLI maps them to its flags."""
  from diffusion import cli
  _, commands = cli.parser()
  flags = {o for command in commands.values() for action in command._actions
           for o in action.option_strings if o.startswith("--") and o != "--help"}
  found = []
  for path in LIBRARY:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module] if isinstance(node, ast.ImportFrom) else [])
      found += [f"{path}:{node.lineno}: imports argparse" for n in names if n == "argparse"]
    for line, text in _messages(path):
      named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w.-])", text)) & flags
      found += [f"{path}:{line}: names {flag}" for flag in sorted(named)]
  assert len(flags) > 40 and not found, "\n".join(found)


def test_sampling_the_applications_and_evaluation_import_nothing_of_training():
  modules = ["diffusion.sampling", "diffusion.sample_run", "diffusion.samplers",
             "diffusion.applications", "diffusion.applications.inpaint", "diffusion.evaluation",
             "diffusion.evaluation.measures", "diffusion.evaluation.nll", "diffusion.runs",
             "diffusion.methods"]
  code = ("import importlib, sys\n"
          f"for m in {modules!r}: importlib.import_module(m)\n"
          "print(sorted(m for m in sys.modules if m.startswith('diffusion.training')))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("reader", ["data_spec", "schedule_from_config", "betas_from_config",
                                    "diffusion_of", "clip_x0", "data_shape"])
def test_only_the_boundary_derives_the_data_and_the_schedule_from_a_config(reader):
  """The Diffusion (schedule, DataSpec, ...) is made from the config in `runs.build` and
  received by everything below it; config.py defines the readers, the CLI and the bench tools
  (which build their own networks) are the boundary."""
  allowed = {"config.py", "runs.py", "benchmarks/throughput.py", "benchmarks/timing.py"}
  calls = []
  for path in LIBRARY:
    where = str(path.relative_to(PACKAGE))
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Call):
        name = getattr(node.func, "id", getattr(node.func, "attr", None))
        if name == reader and where not in allowed:
          calls.append(f"{where}:{node.lineno}")
  assert not calls, calls
