"""`ddpm plan`: the library's programs compiled for TPU topologies on this CPU (libtpu compiles
for a TPU without one). One tiny network is compiled once per topology (module fixtures), and
the checks read those compiles."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from _tiny import tiny_config
from diffusion import models
from diffusion.cli import main
from diffusion.config import data_spec
from diffusion.distributed import make_mesh, mesh_from_config
from diffusion.plan import analysis, plan, programs, topology
from diffusion.sampling import make_sampler
from diffusion.training.state import abstract_state, init_inputs
from diffusion.runs import build

pytest.importorskip("libtpu", reason="compiling for a TPU needs libtpu (pip install '.[tpu]')")


def volumes_config():
  """A small U-Net (32 channels: narrower layers are all-reduced whole, not scattered) on 8³
  volumes, two steps a dispatch, its state split 4 ways."""
  config = tiny_config(steps_per_dispatch=2)
  config.data.update(name="phantoms", shape=(8, 8, 8, 1), kind="volume")
  config.model.update(ch=32, attn_resolutions=())
  config.mesh.update(fsdp=4, min_shard_size=64)
  return config


@pytest.fixture(scope="module")
def v5e():
  """The tiny digits config's train step and sampler on two v5e 2x2 slices (8 chips)."""
  return plan(tiny_config(), topology.devices("v5e:2x2", slices=2), programs=("train", "sample"))


@pytest.fixture(scope="module")
def v5p():
  """`volumes_config()`'s train step on a v5p 2x2x1 (4 chips), fsdp 4."""
  return plan(volumes_config(), topology.devices("v5p:2x2x1"), programs=("train",))


def test_a_plan_gives_memory_flops_and_the_cost_models_time(v5e):
  figures = v5e.figures
  assert figures["devices"] == 8 and figures["slices"] == 2
  assert figures["device_kind"] == "TPU v5 lite" and figures["hbm_bytes_per_device"] == 16 * 2**30
  assert figures["mesh"] == {"data": 8, "fsdp": 1}
  train, sample = figures["programs"]["train"], figures["programs"]["sample"]
  for p in (train, sample):
    assert p["fits"] and p["examples_per_call"] == 16 and p["examples_per_device"] == 2
    assert p["memory"]["total_bytes"] >= p["memory"]["argument_bytes"] > 0
    assert p["cost"]["flops_per_device"] > 0
  assert sample["cost"]["estimated_seconds"] > 0 and 0 < sample["cost"]["estimated_mfu"] < 1
  # The cost model gives no time to a program with collectives across slices: none is shown.
  assert train["cost"]["xla_optimal_seconds"] <= 0 and train["cost"]["estimated_seconds"] is None
  # The state: parameters, Adam's two moments, the EMA and digits.py's two power-function
  # EMAs, replicated at fsdp 1.
  config = tiny_config()
  shape = data_spec(config).shape
  model = models.build(config.model, shape)
  state = abstract_state(build(config, model), mesh_from_config(config), init_inputs(model, shape))
  params = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state.params))
  trees = 4 + len(config.train.power_ema)
  assert trees == 6
  assert trees * params <= train["memory"]["state_bytes_per_device"] < trees * params + 2**16
  # Data parallelism over two slices: the gradient's all-reduce (XLA splits it into a
  # reduce-scatter and an all-gather within each slice around the all-reduce between them).
  assert train["collectives"]["all-reduce"]["count"] >= 1


def test_the_data_axis_spans_the_slices():
  """Multi-slice: "data" runs over the slices (DCN), "fsdp" stays within one (ICI)."""
  devices = topology.devices("v5e:2x2", slices=2)
  config = tiny_config()
  config.mesh.fsdp = 2
  mesh = mesh_from_config(config, devices)
  slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert slices.shape == (4, 2) and (slices[:2] == 0).all() and (slices[2:] == 1).all()
  config.mesh.fsdp = 8
  with pytest.raises(ValueError, match="config.mesh.fsdp 8 must divide the 4 devices of each"):
    mesh_from_config(config, devices)


def test_the_samplers_chain_is_counted_for_each_of_its_steps(v5e):
  """XLA's cost analysis counts a loop's body once: the plan scales it by the chain's steps."""
  config = tiny_config()
  model = models.build(config.model, (8, 8, 1))
  mesh = mesh_from_config(config, topology.devices("v5e:2x2", slices=2))
  variables = programs._variables(build(config, model), mesh)
  raw = {}
  for steps in (2, 8):
    compiled = make_sampler(build(config, model), mesh, steps=steps).lower(
        variables, 16).compile()
    raw[steps] = compiled.cost_analysis()["flops"]
  assert raw[8] == pytest.approx(raw[2], rel=0.05)  # the body once, whatever the steps
  sample = v5e.figures["programs"]["sample"]
  assert sample["what"] == "a chain of 20 network evaluations"
  assert sample["cost"]["flops_per_device"] == pytest.approx(20 * raw[2], rel=0.05)


def test_a_chain_with_a_step_outside_its_loop_is_scaled_by_its_evaluations():
  """Heun's chain scans two evaluations a step and ends with one more outside the scan: XLA
  counts three, and the plan scales them to the chain's 2N − 1 (on CPU devices: no TPU
  compile)."""
  config = tiny_config()
  run = build(config, models.build(config.model, (8, 8, 1)))
  mesh = make_mesh(jax.devices()[:1])
  variables = programs._variables(run, mesh)
  flops, samplers_ = {}, {}
  for name in ("ddim", "heun"):
    samplers_[name] = make_sampler(run, mesh, sampler=name, steps=6)
    flops[name] = samplers_[name].lower(variables, 4).compile().cost_analysis()["flops"]
  heun = samplers_["heun"]
  assert (heun.evaluations, heun.counted_evaluations, heun.loop_trips) == (11, 3, 5)
  assert flops["heun"] == pytest.approx(3 * flops["ddim"], rel=0.1)  # ddim: its body once
  assert flops["heun"] * heun.evaluations / heun.counted_evaluations == pytest.approx(
      11 * flops["ddim"], rel=0.1)


def test_the_plan_is_the_program_the_tpu_runs(v5p):
  """Compiled on a CPU host for a TPU: the steps-per-dispatch scan stays a while loop and the
  3-D convolutions stay 3-D (on a CPU backend both are rewritten); fsdp gathers parameters."""
  hlo = v5p.compiled["train"].as_text()
  assert re.search(r"\swhile\(", hlo)
  assert re.search(r"dim_labels=b012f_012io->b012f", hlo), "no 3-D convolution"
  train = v5p.figures["programs"]["train"]
  assert train["what"] == "2 train steps a dispatch" and train["examples_per_call"] == 32
  assert train["cost"]["estimated_seconds"] > 0 and 0 < train["cost"]["estimated_mfu"] < 1
  # fsdp: the parameters gathered (in the compute dtype, at least once), the gradient reduced
  # once, and the activations never resharded (no collective-permute, no all-to-all: left to
  # XLA's propagation, they were).
  collectives = train["collectives"]
  config = volumes_config()
  model = models.build(config.model, (8, 8, 8, 1))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **{
      "x": np.zeros((1, 8, 8, 8, 1), np.float32), "t": np.zeros((1,), np.int32)}))
  sharded = sum(a.size for a in jax.tree.leaves(shapes["params"]) if a.size >= 64)
  itemsize = np.dtype(config.model.dtype).itemsize
  assert collectives["all-gather"]["bytes"] >= sharded * itemsize * 3 / 4
  assert collectives["all-reduce"]["bytes"] <= 2 * (sharded * 4 + 2**16)  # one f32 gradient
  assert collectives["collective-permute"]["count"] == 0 and collectives["all-to-all"]["count"] == 0
  # Traced for the host's CPU devices instead, the 3-D convolutions are split into 2-D ones.
  lowered = {name: programs.lower("train", build(config, model), mesh_from_config(config, devices),
                                  batch=16).lowered.as_text()
             for name, devices in (("tpu", topology.devices("v5p:2x2x1")), ("cpu", None))}
  conv3d = r"dim_numbers = \[b, 0, 1, 2, f\]x\[0, 1, 2, i, o\]"
  assert re.search(conv3d, lowered["tpu"]) and not re.search(conv3d, lowered["cpu"])


def test_fsdp_4_holds_a_quarter_of_the_state_a_chip():
  """From the shardings alone (nothing compiles): the digits U-Net on a v5p 2x2x1."""
  config = tiny_config()
  config.model.update(ch=64, ch_mult=(1, 2), num_groups=8)
  devices = topology.devices("v5p:2x2x1")
  held = {}
  for fsdp in (1, 4):
    config.mesh.fsdp = fsdp
    model = models.build(config.model, data_spec(config).shape)
    state = abstract_state(build(config, model), mesh_from_config(config, devices),
                           init_inputs(model, data_spec(config).shape))
    held[fsdp] = analysis.shard_bytes(state)
  assert 0.25 <= held[4] / held[1] < 0.3, held  # small leaves stay whole


def test_the_plans_train_step_is_the_one_training_compiles(tmp_path, monkeypatch):
  """On CPU devices: the program `ddpm plan` lowers is the text of the one `train` runs."""
  from diffusion.data import DigitsSource
  from diffusion.training import loop
  config = tiny_config(num_steps=1, sample_every=100)
  seen = []
  real = loop.make_train_step

  def spy(*args, **kwargs):
    step = real(*args, **kwargs)

    def call(state, batch, key):
      seen.append(step.lower(state, batch, key).as_text())
      return step(state, batch, key)
    return call

  monkeypatch.setattr(loop, "make_train_step", spy)
  loop.train(config, str(tmp_path / "run"), source=DigitsSource())
  model = models.build(config.model, data_spec(config).shape)
  planned = programs.lower("train", build(config, model), mesh_from_config(config), batch=16)
  def strip(text):
    """The functions of a module without locations, without the numbers tracing gives private
    functions (@clip_16), in no order and once each (JAX's caches, warmed by what the process
    traced before, change their order and may emit one twice)."""
    text = re.sub(r"\s*loc\(.*?\)$|^#loc.*$", "", text, flags=re.M)
    text = re.sub(r"@([A-Za-z_]\w*?)(_\d+)?\b", r"@\1", text)
    return set(re.split(r"\n(?=  func\.func )", text))
  assert len(seen) == 1 and strip(planned.lowered.as_text()) == strip(seen[0])


def test_a_program_that_does_not_fit_ends_in_one_line(capsys):
  """The TPU compiler's refusal (RESOURCE_EXHAUSTED) as one line and exit status 1."""
  from _tiny import tiny_overrides
  code = main(["plan", "--config", "experiments/configs/digits.py", "--topology", "v5e:2x2",
               "--programs", "train", *tiny_overrides(), "--config.model.ch=4096",
               "--config.model.num_groups=32", "--config.model.attn_resolutions=()"])
  out, err = capsys.readouterr()
  assert code == 1
  lines = err.strip().splitlines()
  assert lines[-1].startswith("ddpm plan: train does not fit on v5e:2x2: it needs ")
  need, have = map(float, re.findall(r"([\d.]+) GiB", lines[-1])[:2])
  assert need > have > 15 and "Traceback" not in err and "does not fit" in out


@pytest.mark.parametrize("arguments, message", [
    (["--topology", "v5e"], "--topology 'v5e' is not a TPU topology: give GENERATION:AxB[xC]"),
    (["--topology", "v5e:3x3"], "--topology 'v5e:3x3': libtpu does not take it"),
    (["--topology", "v5e:2x2", "--slices", "0"], "--slices must be a positive int"),
    (["--topology", "v5e:2x2", "--config.mesh.fsdp=3"],
     "config.mesh.fsdp 3 must divide the 4 devices"),
    (["--topology", "v5e:2x4", "--config.train.batch_size=12"],
     "config.train.batch_size 12 must be a positive multiple of the 8 devices"),
    (["--topology", "v5e:2x2", "--programs", "train,fid"], "--programs 'train,fid': choose from"),
])
def test_bad_input_is_one_line(arguments, message, capsys):
  code = main(["plan", "--config", "experiments/configs/digits.py", *arguments])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_missing_libtpu_is_one_line(monkeypatch, capsys):
  from jax._src import cloud_tpu_init
  monkeypatch.setattr(cloud_tpu_init, "get_tpu_library_path", lambda: None)
  code = main(["plan", "--config", "experiments/configs/digits.py", "--topology", "v5e:2x2"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "pip install 'ddpm-jax[tpu]'" in err


def test_libtpu_says_nothing_to_the_other_commands():
  """With libtpu installed and no TPU here, JAX would start libtpu and print its warnings."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  probe = "import jax; {} jax.devices()"
  quiet = "from diffusion import distributed; distributed.skip_absent_tpu();"
  said = [subprocess.run([sys.executable, "-c", probe.format(call)], env=env, text=True,
                         capture_output=True, check=True).stderr for call in ("", quiet)]
  assert "TPU" in said[0]  # the noise this guards against (fails if libtpu stops printing it)
  assert said[1] == ""


@pytest.mark.parametrize("what, limit_value, best", [
    ("batch", 37, 32), ("batch", 1, 1), ("batch", 0, None), ("batch", 4096, 4096),
    ("fsdp", 3, 4), ("fsdp", 1, 1), ("fsdp", 9, None)])
def test_search_finds_the_boundary_in_few_compiles(what, limit_value, best, monkeypatch):
  """The bisection, against a compiler (here a stand-in) whose verdict flips at one value."""
  import diffusion.plan as planning
  compiled = []

  def fake_plan(config, devices, programs, model=None):
    value = (config.train.batch_size // len(devices) if what == "batch"
             else config.mesh.fsdp)
    compiled.append(value)
    fits = value <= limit_value if what == "batch" else value >= limit_value
    entry = {"fits": fits, "memory": {"total_bytes": value}} if fits else {
        "fits": False, "needed_bytes": value, "available_bytes": 0}
    return planning.Plan({"programs": {"train": entry}}, {})

  monkeypatch.setattr(planning, "plan", fake_plan)
  found = planning.search(tiny_config(), [object()] * 8, what)
  assert found["best"] == best and len(compiled) <= 8 and len(set(compiled)) == len(compiled)
  assert [t["value"] for t in found["tries"]] == compiled
