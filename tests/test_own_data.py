"""Bring your own data and network: sources and networks the test defines itself (a Linen
module, a plain function, an NNX module with batch statistics) on 1-D, 3-D and point-set
data, trained through `diffusion.training.train`, resumed bit-identically and sampled."""

import importlib.util
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _tiny import tiny_config
from diffusion import models
from diffusion.sample_run import draw_samples
from diffusion.training import load_run, train
from diffusion.runs import build, Checkpoints


def embed(t, dim):
  return models.timestep_embedding(t, dim)


# ----- three kinds of data, as a user would write them -----

class Waves:
  """float32 [16, 1] sine waves of random phase."""
  num_classes = 0

  def __init__(self, n=64):
    self.phases = np.random.default_rng(0).uniform(0, 2 * np.pi, n)

  def __len__(self):
    return len(self.phases)

  def __getitem__(self, i):
    t = np.arange(16) / 16
    return {"x": np.sin(2 * np.pi * t + self.phases[i]).astype(np.float32)[:, None]}


class Blobs:
  """uint8 [8, 8, 8, 1] volumes with a bright cube at a random place; label: its octant's
  z half."""
  num_classes = 2

  def __len__(self):
    return 32

  def __getitem__(self, i):
    rng = np.random.default_rng(i)
    x = np.zeros((8, 8, 8, 1), np.uint8)
    a, b, c = rng.integers(0, 5, 3)
    x[a:a + 3, b:b + 3, c:c + 3] = 255
    return {"x": x, "label": int(a >= 3)}


class Rings:
  """float32 [6, 3] points in Å: a hexagon of radius 4, randomly rotated, not centred."""
  num_classes = 0

  def __len__(self):
    return 40

  def __getitem__(self, i):
    from diffusion.data.loader import random_rotation
    rng = np.random.default_rng(i)
    angles = np.arange(6) * np.pi / 3
    ring = 4.0 * np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], -1)
    return {"x": (ring @ random_rotation(rng).T + rng.normal(0, 3, 3)).astype(np.float32)}


# ----- three kinds of network -----

class Conv1D(nn.Module):
  """A Linen module with dropout: the engine passes train= and a dropout key."""

  @nn.compact
  def __call__(self, x, t, train=False):
    h = nn.Conv(16, (3,))(x) + nn.Dense(16)(embed(t, 16))[:, None]
    h = nn.Dropout(0.1, deterministic=not train)(nn.silu(h))
    return nn.Conv(x.shape[-1], (3,))(h)


def conv3d_init(key, x, t):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"in": jax.random.normal(k1, (3, 3, 3, 1, 8)) * 0.2,
          "t": jax.random.normal(k2, (16, 8)) * 0.2,
          "y": jnp.zeros((3, 8)),
          "out": jax.random.normal(k3, (1, 1, 1, 8, 1)) * 0.2}


def conv3d_apply(params, x, t, y):
  """A plain function: a 3-D convolution, a time and class bias, swish, a 1×1×1 convolution."""
  conv = lambda a, w: jax.lax.conv_general_dilated(
      a, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  h = conv(x, params["in"]) + (embed(t, 16) @ params["t"] + params["y"][y])[:, None, None, None]
  return conv(jax.nn.silu(h), params["out"])


class PointNet(nnx.Module):
  """An NNX module with BatchNorm: its statistics are state the engine carries."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(3 + 8, 32, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.out = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x, t):
    temb = jnp.broadcast_to(embed(t, 8)[:, None], x.shape[:2] + (8,))
    h = self.inp(jnp.concatenate([x, temb], -1))
    return self.out(nnx.silu(self.norm(h)))


CASES = {
    "sequence-linen": (dict(shape=(16, 1)), Waves, lambda: Conv1D()),
    "volume-function": (dict(shape=(8, 8, 8, 1)), Blobs,
                        lambda: models.function(conv3d_apply, conv3d_init, num_classes=2)),
    "points-nnx": (dict(shape=(6, 3), kind="points", scale=4.0), Rings,
                   lambda: models.nnx(PointNet)),
}


def config_for(data, steps):
  config = tiny_config(num_steps=steps, batch_size=8, checkpoint_every=2, num_samples=8,
                       log_every=1)
  config.data.update(data)
  return config


@pytest.mark.parametrize("case", sorted(CASES))
def test_own_network_and_data_train_resume_and_sample(tmp_path, case):
  data, source, network = CASES[case]
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  assert train(config_for(data, 4), whole, model=network(), source=source()) == 4
  assert train(config_for(data, 2), split, model=network(), source=source()) == 2
  assert train(config_for(data, 4), split, model=network(), source=source()) == 4
  states = []
  for workdir in (whole, split):
    checkpoints = Checkpoints(workdir, read_only=True)
    states.append({part: checkpoints.restore_part(part, 4)
                   for part in ("params", "ema_params", "opt_state", "model_state")})
    checkpoints.close()
  jax.tree.map(np.testing.assert_array_equal, states[0], states[1])
  if case == "points-nnx":  # the batch statistics were trained and saved
    mean = states[0]["model_state"]["state"]["norm"]["mean"]
    assert np.abs(np.asarray(mean)).max() > 0
  # A grid of samples was written while training (a preview of the data kind).
  assert (tmp_path / "whole" / "samples" / "step_00000004.png").exists()

  config, model, variables, step = load_run(whole, model=network())
  assert step == 4 and config.model.name.startswith("(a network passed")
  labels = np.arange(8) % 2
  samples = draw_samples(build(config, model), labels, variables=variables, sampler="ddim", steps=5)
  spec_shape = tuple(data["shape"])
  assert samples.shape == (8, *spec_shape) and np.all(np.isfinite(samples.astype(np.float32)))
  if case == "volume-function":
    assert samples.dtype == np.uint8
  else:
    assert samples.dtype == np.float32
  if case == "points-nnx":
    np.testing.assert_allclose(samples.mean(axis=1), 0, atol=1e-4)  # centred: CoM-free
    assert (tmp_path / "whole" / "samples" / "step_00000004.pdb").exists()


def test_a_network_trained_in_python_needs_its_import_path_in_a_new_process(tmp_path):
  workdir = str(tmp_path / "run")
  data, source, network = CASES["sequence-linen"]
  train(config_for(data, 2), workdir, model=network(), source=source())
  with pytest.raises(ValueError, match=r"config.model.name '\(a network passed to train\(\) in "
                                       r"Python\)' is neither a registered network"):
    load_run(workdir)


def test_eight_devices_equal_one_for_a_user_network_and_source(tmp_path):
  """The per-batch step's invariance holds for networks and data of any shape: the same run
  on 1 and on 8 devices gives the same parameters (to float32 rounding)."""
  from diffusion.distributed import make_mesh
  from diffusion.training import create_state, make_train_step, shard_batch
  from diffusion.runs import base_key
  config = config_for(dict(shape=(16, 1)), 3)
  model = models.as_denoiser(Conv1D())
  source = Waves()
  batch = {"x": np.stack([source[i]["x"] for i in range(8)]), "label": np.zeros(8, np.int32)}
  results = []
  for n in (1, 8):
    mesh = make_mesh(jax.devices()[:n])
    state = create_state(build(config, model), mesh, {"x": jnp.zeros((1, 16, 1))})
    step = make_train_step(build(config, model), mesh)
    for _ in range(3):
      state, _ = step(state, shard_batch(batch, mesh), base_key(0, "train"))
    results.append(jax.device_get(state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), *results)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
  """The README's "Your own data and network" example, exactly as printed there."""
  root = os.path.join(os.path.dirname(__file__), os.pardir)
  with open(os.path.join(root, "README.md")) as f:
    readme = f.read()
  section = readme[readme.index("## Your own data and network"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  os.symlink(os.path.abspath(os.path.join(root, "experiments")), tmp_path / "experiments")
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)
  waves = namespace["waves"]
  assert waves.shape == (16, 32, 1) and waves.dtype == np.float32
  assert (tmp_path / "runs" / "waves" / "samples" / "step_00000400.png").exists()
  # Most samples are waves of one cycle per trace, as the data (noise: about 1 in 16).
  spectrum = np.abs(np.fft.rfft(waves[..., 0] - waves[..., 0].mean(1, keepdims=True), axis=1))
  assert np.mean(np.argmax(spectrum, axis=1) == 1) >= 0.6


class Broken:
  """Waves with one bad example at `index`."""
  num_classes = 0

  def __init__(self, index, bad):
    self.waves, self.index, self.bad = Waves(), index, bad

  def __len__(self):
    return len(self.waves)

  def __getitem__(self, i):
    return {"x": self.bad} if i == self.index else self.waves[i]


class TwoChannels(nn.Module):
  @nn.compact
  def __call__(self, x, t):
    return nn.Dense(2)(x)


@pytest.mark.parametrize("data, model, source, message", [
    (dict(shape=(16, 1)), Conv1D, lambda: Broken(0, np.zeros((15, 1), np.float32)),
     r"source\[0\]\['x'\] has shape \(15, 1\); config.data.shape is \(16, 1\)"),
    (dict(shape=(16, 1), dtype="uint8", kind="sequence"), Conv1D, Waves,
     r"source\[0\]\['x'\] has dtype float32; config.data.dtype is uint8"),
    (dict(shape=(16, 1)), TwoChannels, Waves,
     r"gives output of shape \(16, 2\) for data of shape \(16, 1\); the diffusion settings "
     r"need \(16, 1\)"),
    (dict(shape=(0, 1)), Conv1D, Waves, r"config.data.shape must be a tuple of positive ints"),
    (dict(shape=(16, 1), random_rotation=True), Conv1D, Waves,
     r"config.data.random_rotation rotates point sets; config.data.kind is 'sequence'"),
    (dict(shape=(16, 1), kind="pixels"), Conv1D, Waves, r"config.data.kind must be one of"),
])
def test_bad_data_and_networks_stop_before_anything_is_written(tmp_path, data, model, source,
                                                               message):
  with pytest.raises(ValueError, match=message):
    train(config_for(data, 2), str(tmp_path / "run"), model=model(), source=source())
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_example_met_in_training_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"source\[17\]\['x'\] has shape \(16, 2\)"):
    train(config_for(dict(shape=(16, 1)), 40), str(tmp_path / "run"), model=Conv1D(),
          source=Broken(17, np.zeros((16, 2), np.float32)))


def test_egnn_refuses_data_that_is_not_a_point_set(tmp_path):
  import ml_collections
  config = config_for(dict(shape=(16, 3)), 2)  # a sequence of 3 channels, not points
  config.model = ml_collections.ConfigDict(dict(name="egnn", hidden=8, depth=1))
  with pytest.raises(ValueError, match=r"config.model.name 'egnn' takes points data; "
                                       r"config.data.kind is 'sequence'"):
    train(config, str(tmp_path / "run"), source=Rings())


def test_numpy_sources(tmp_path):
  from diffusion.data.sources import NumpySource
  x = np.random.default_rng(0).normal(size=(10, 6, 3)).astype(np.float32)
  labels = np.arange(10) % 3
  np.save(tmp_path / "x.npy", x)
  source = NumpySource(str(tmp_path / "x.npy"))
  assert isinstance(source.arrays["x"], np.memmap) and len(source) == 10
  np.testing.assert_array_equal(source[4]["x"], x[4])
  np.savez(tmp_path / "data.npz", x=x, label=labels)
  source = NumpySource(str(tmp_path / "data.npz"))
  assert source[5]["label"] == 2 and source.num_classes == 3
  folder = tmp_path / "folder"
  folder.mkdir()
  np.save(folder / "x.npy", x)
  np.save(folder / "label.npy", labels)
  source = NumpySource(str(folder))
  assert isinstance(source.arrays["label"], np.memmap) and source[7]["label"] == 1
  np.save(folder / "cond.npy", x[:9])
  with pytest.raises(ValueError, match="cond has 9 rows, x has 10"):
    NumpySource(str(folder))
  np.savez(tmp_path / "bad.npz", y=x)
  with pytest.raises(ValueError, match=r"the .npz has no array 'x'"):
    NumpySource(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    NumpySource(str(tmp_path / "missing.npy"))
  # Truncated files (a copy that stopped) are named, whatever NumPy or zipfile raises.
  for name in ("x.npy", "data.npz"):
    data = (tmp_path / name).read_bytes()
    (tmp_path / f"cut_{name}").write_bytes(data[:len(data) // 2] if name.endswith("npz")
                                           else data[:100])
    with pytest.raises(ValueError, match=f"config.data.path .*cut_{name}' cannot be read as "
                                         "NumPy arrays \\(a truncated or broken file\\?\\)"):
      NumpySource(str(tmp_path / f"cut_{name}"))


def test_a_checkpoint_from_before_shapes_and_model_state_resumes_exactly(tmp_path):
  """Workdirs written before config.data.shape and TrainState.model_state existed: a state
  without model_state and a config without the data's shape keys resume, bit for bit."""
  import orbax.checkpoint as ocp
  first, old = (str(tmp_path / n) for n in ("first", "old"))
  train(tiny_config(num_steps=2, checkpoint_every=2), first)
  checkpoints = Checkpoints(first, read_only=True)
  state = {f: checkpoints.restore_part(f, 2) for f in
           ("step", "params", "opt_state", "ema_params", "skipped", "loss_history", "loss_count")}
  saved = json.loads(checkpoints.restore_config(2).to_json())
  checkpoints.close()
  for key in ("shape", "kind", "dtype", "scale"):
    del saved["data"][key]
  legacy = Checkpoints(old, every=1)
  legacy.manager.save(2, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave({"position": 2 * 16}),
      config=ocp.args.JsonSave(saved)))
  legacy.close()
  # The legacy checkpoint and the new one of the same step resume to the same parameters.
  assert train(tiny_config(num_steps=4, checkpoint_every=2), old) == 4
  assert train(tiny_config(num_steps=4, checkpoint_every=2), first) == 4
  a, b = Checkpoints(old, read_only=True), Checkpoints(first, read_only=True)
  jax.tree.map(np.testing.assert_array_equal, a.restore_part("params", 4),
               b.restore_part("params", 4))
  a.close()
  b.close()


def test_point_set_predictions_are_centred_but_not_their_learned_variances():
  from diffusion.dataspec import DataSpec
  spec = DataSpec((5, 3), "points", "float32")
  out = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
  projected = np.asarray(spec.project_output(jnp.asarray(out), 3))
  np.testing.assert_allclose(projected[..., :3].mean(axis=1), 0, atol=1e-6)
  np.testing.assert_allclose(projected[..., :3], out[..., :3] - out[..., :3].mean(1, keepdims=True),
                             atol=1e-6)
  np.testing.assert_array_equal(projected[..., 3:], out[..., 3:])
  image = DataSpec((4, 5, 3))
  np.testing.assert_array_equal(image.project_output(out, 3), out)


def test_random_rotations_keep_the_shape_of_a_point_set():
  from diffusion.data import Loader
  from diffusion.dataspec import DataSpec
  source = Rings()
  spec = DataSpec((6, 3), "points", "float32", 4.0)
  batch = next(Loader(source, 8, seed=0, random_rotation=True, spec=spec).batches())
  plain = next(Loader(source, 8, seed=0, spec=spec).batches())
  distances = lambda x: np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
  np.testing.assert_allclose(distances(batch["x"]), distances(plain["x"]), atol=1e-4)
  assert np.abs(batch["x"] - plain["x"]).max() > 1.0  # but rotated


def test_the_protein_example_trains_samples_and_evaluates_from_the_command_line(tmp_path,
                                                                                capsys):
  """The worked example's commands on a small run: `ddpm sample` writes Å coordinates and a
  PDB file; `ddpm evaluate --synthetic` measures them."""
  from _tiny import CONFIGS
  from diffusion import cli
  workdir, out = str(tmp_path / "protein"), str(tmp_path / "samples.npz")
  assert cli.main(["train", "--config", os.path.join(CONFIGS, "protein.py"), "--workdir", workdir,
                   "--config.train.num_steps=4", "--config.train.batch_size=8",
                   "--config.train.num_samples=0", "--config.model.hidden=16",
                   "--config.model.depth=1", "--config.diffusion.num_steps=20"]) == 0
  assert cli.main(["sample", "--workdir", workdir, "--num", "8", "--out", out, "--sampler",
                   "ddim", "--steps", "5"]) == 0
  data = np.load(out)
  assert data["arr_0"].shape == (8, 16, 3) and data["arr_0"].dtype == np.float32
  np.testing.assert_allclose(data["arr_0"].mean(axis=1), 0, atol=1e-3)
  pdb = (tmp_path / "samples.pdb").read_text().splitlines()
  atoms = [line for line in pdb if line.startswith("ATOM")]
  assert len(atoms) == 8 * 16 and pdb.count("ENDMDL") == 8
  # PDB columns 31-54 hold x, y, z in Å: the first atom is the first sample's first residue.
  np.testing.assert_allclose([float(atoms[0][30:38]), float(atoms[0][38:46]),
                              float(atoms[0][46:54])], data["arr_0"][0, 0], atol=1e-3)
  assert (tmp_path / "samples.png").exists()
  capsys.readouterr()
  assert cli.main(["evaluate", "--samples", out, "--synthetic", "backbones"]) == 0
  table = capsys.readouterr().out
  assert "ca_ca_distance" in table and "radius_of_gyration" in table
  # The applications on point sets: arrays in, an .npz (Å) with a preview and a PDB out.
  motif = data["arr_0"][0] + np.float32([20, 0, 0])
  known = np.arange(16) < 8
  np.save(tmp_path / "motif.npy", motif)
  np.save(tmp_path / "known.npy", known)
  scaffold = tmp_path / "scaffold.npz"
  assert cli.main(["inpaint", "--workdir", workdir, "--image", str(tmp_path / "motif.npy"),
                   "--mask", str(tmp_path / "known.npy"), "--out", str(scaffold), "--steps", "4",
                   "--jump-length", "2", "--resamplings", "2", "--num-samples", "2"]) == 0
  filled = np.load(scaffold)["arr_0"]
  assert filled.shape == (2, 16, 3) and filled.dtype == np.float32
  np.testing.assert_array_equal(filled[:, known], np.broadcast_to(motif[known], (2, 8, 3)))
  assert (tmp_path / "scaffold.png").exists() and (tmp_path / "scaffold.pdb").exists()
  assert cli.main(["denoise", "--workdir", workdir, "--image", str(tmp_path / "motif.npy"),
                   "--sigma", "0.5", "--out", str(tmp_path / "denoised.npz"), "--num-samples", "2",
                   "--sampler", "ddim", "--steps", "3"]) == 0
  denoised = np.load(tmp_path / "denoised.npz")
  assert denoised["arr_0"].shape == (2, 16, 3) and denoised["std"].shape == (16, 3)
  np.savez(tmp_path / "set.npz", x=data["arr_0"], labels=np.arange(8) % 2)
  assert cli.main(["anomaly", "--workdir", workdir, "--images", str(tmp_path / "set.npz"),
                   "--out", str(tmp_path / "scores.csv"), "--at-step", "5", "--sampler", "ddim",
                   "--steps", "3"]) == 0
  assert np.load(tmp_path / "scores_maps.npz")["maps"].shape == (8, 16)
  capsys.readouterr()
  for argv, message in [
      (["inpaint", "--image", "motif.npy", "--mask", "known.npy", "--out", "o.png"],
       "--out .*o.png.*: this run's data is points data; the output is an .npz"),
      (["inpaint", "--image", "motif.png", "--mask", "known.npy", "--out", "o.npz"],
       "--image .*motif.png.*: this run's data is points data of shape \\(16, 3\\); give an "
       ".npy"),
      (["inpaint", "--image", "motif.npy", "--mask", "set.npz", "--out", "o.npz"],
       "--mask .*set.npz.* has shape \\(8, 16, 3\\); the data's positions are \\(16,\\)"),
      (["denoise", "--image", "known.npy", "--sigma", "1", "--out", "o.npz"],
       "--image .*known.npy.* has shape \\(16,\\); the model takes \\(16, 3\\)"),
      (["denoise", "--image", "motif.npy", "--sigma", "-1", "--out", "o.npz"],
       "--sigma must be > 0 \\(a standard deviation in the data's units\\)")]:
    argv = [argv[0], "--workdir", workdir] + [
        str(tmp_path / a) if "." in a and not a[0].isdigit() else a for a in argv[1:]]
    (tmp_path / "motif.png").write_bytes(b"")
    assert cli.main(argv) == 2, argv
    assert re.search(message, capsys.readouterr().err), message
  # The scaffolding measurement of experiments/README.md runs on this workdir.
  script = importlib.util.spec_from_file_location(
      "scaffold_backbones", os.path.join(CONFIGS, os.pardir, "scaffold_backbones.py"))
  module = importlib.util.module_from_spec(script)
  script.loader.exec_module(module)
  module.main(["--workdir", workdir, "--num", "8", "--steps", "4", "--jump-length", "2",
               "--resamplings", "2", "--out", str(tmp_path / "scaffold.json")])
  rows = json.loads((tmp_path / "scaffold.json").read_text())["rows"]
  assert set(rows) == {"scaffold", "unconditional, superposed"}
  assert all(np.isfinite(r["rmsd_median"]) and r["joint_mean"] > 0 for r in rows.values())
