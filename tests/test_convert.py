"""The diffusers converter: the same ε as the PyTorch network, from files on disk."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from diffusers import UNet2DModel

from diffusion import convert, models

# The DDPM CIFAR-10 network as the released google/ddpm-cifar10-32 config.json describes it.
CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    attention_head_dim=None, act_fn="silu", mid_block_scale_factor=1,
    center_input_sample=False, time_embedding_type="positional")
SMALL = dict(CIFAR10, sample_size=16, block_out_channels=(32, 64), norm_num_groups=8,
             down_block_types=("AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "AttnUpBlock2D"), attention_head_dim=8,
             num_class_embeds=5, layers_per_block=1)


def reference(config, tmp_path, seed=0, **save_kwargs):
  """A randomly initialised diffusers UNet2DModel, with random norms too, saved to disk."""
  torch.manual_seed(seed)
  net = UNet2DModel(**config).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  path = str(tmp_path / "diffusers")
  net.save_pretrained(path, **save_kwargs)
  return net, path


def compare(net, model, params, t, class_labels=None, size=32):
  x = np.random.default_rng(1).uniform(-1, 1, (len(t), 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x), torch.from_numpy(t),
               class_labels=None if class_labels is None else torch.from_numpy(class_labels)).sample
  kwargs = {} if class_labels is None else {"y": jnp.asarray(class_labels)}
  got = jax.jit(lambda p, x: model.apply({"params": p}, x, jnp.asarray(t), **kwargs))(
      params, jnp.asarray(x.transpose(0, 2, 3, 1)))
  got = np.asarray(got).transpose(0, 3, 1, 2)
  want = want.numpy()
  for i in range(len(t)):
    rel = np.linalg.norm(got[i] - want[i]) / np.linalg.norm(want[i])
    assert rel < 1e-4, (t[i], rel)
  return got


def test_the_cifar10_network_gives_the_same_eps_as_pytorch(tmp_path):
  net, path = reference(CIFAR10, tmp_path)
  assert sorted(os.listdir(path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
  model, params = convert.from_diffusers(path)
  assert sum(p.size for p in jax.tree.leaves(params)) == 35_746_307
  assert model == models.from_config(dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                                          attn_resolutions=(16,), dropout=0.0, out_channels=3))
  compare(net, model, params, np.array([0, 10, 500, 999]))


def test_heads_classes_bin_files_and_old_attention_names(tmp_path):
  net, path = reference(SMALL, tmp_path, safe_serialization=False)
  assert os.path.exists(os.path.join(path, "diffusion_pytorch_model.bin"))
  model, params = convert.from_diffusers(path)
  assert model.head_dim == 8 and model.num_classes == 5 and model.attn_resolutions == (16,)
  t, y = np.array([3, 900]), np.array([0, 4])
  compare(net, model, params, t, class_labels=y, size=16)
  # The null class (index 5) adds nothing to the time embedding.
  assert np.all(params["class_embed"]["embedding"][5] == 0)

  # Files written before diffusers renamed the attention projections.
  old = str(tmp_path / "old")
  os.makedirs(old)
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  state = {}
  for k, v in net.state_dict().items():
    for new, former in renames.items():
      k = k.replace(f".{new}.", f".{former}.")
    state[k] = v.numpy()
  safetensors.numpy.save_file(state, os.path.join(old, "diffusion_pytorch_model.safetensors"))
  with open(os.path.join(path, "config.json")) as f:
    config = f.read()
  with open(os.path.join(old, "config.json"), "w") as f:
    f.write(config)
  _, old_params = convert.from_diffusers(old)
  jax.tree.map(np.testing.assert_array_equal, old_params, params)


def test_read_safetensors_matches_the_reference_reader(tmp_path):
  tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
             "b": np.linspace(-2, 2, 7).astype(np.float16),
             "c": np.arange(5, dtype=np.int64)}
  path = str(tmp_path / "t.safetensors")
  safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
  torch_path = str(tmp_path / "bf16.safetensors")
  safetensors.torch.save_file({"w": torch.linspace(-1, 1, 9, dtype=torch.bfloat16)}, torch_path)
  got = convert.read_safetensors(path)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)
  bf16 = convert.read_safetensors(torch_path)["w"]
  np.testing.assert_array_equal(bf16.astype(np.float32),
                                torch.linspace(-1, 1, 9, dtype=torch.bfloat16).float().numpy())
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-8])
  with pytest.raises(ValueError, match=r"t.safetensors is not a readable safetensors file"):
    convert.read_safetensors(path)


def test_bad_folders_and_configs(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    convert.from_diffusers(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    convert.from_diffusers(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
  with pytest.raises(FileNotFoundError, match="none of the weight files"):
    convert.from_diffusers(str(tmp_path))

  base = {"_class_name": "UNet2DModel", **{k: list(v) if isinstance(v, tuple) else v
                                           for k, v in CIFAR10.items()}}
  for change, match in [
      ({"_class_name": "UNet2DConditionModel"}, "_class_name = 'UNet2DConditionModel'"),
      ({"flip_sin_to_cos": True}, "flip_sin_to_cos = True cannot be represented"),
      ({"downsample_padding": 1}, "downsample_padding = 1"),
      ({"norm_eps": 1e-5}, "norm_eps = 1e-05"),
      ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]},
       "attention at the same levels as down_block_types"),
      ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
       "down_block_types/up_block_types"),
      ({"class_embed_type": "timestep"}, "class_embed_type = 'timestep'"),
  ]:
    with pytest.raises(ValueError, match=match):
      convert.unet_from_diffusers_config({**base, **change})


def test_weights_that_do_not_fit_the_config(tmp_path):
  net, path = reference(SMALL, tmp_path)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  model = convert.unet_from_diffusers_config(json.load(open(os.path.join(path, "config.json"))))
  missing = dict(state)
  del missing["mid_block.resnets.1.conv2.bias"]
  with pytest.raises(ValueError, match="the weights lack mid_block.resnets.1.conv2.bias"):
    convert.params_from_diffusers(model, missing)
  with pytest.raises(ValueError, match=r"1 tensors this network has no place for, e.g. \['extra.weight'\]"):
    convert.params_from_diffusers(model, {**state, "extra.weight": np.zeros(3)})
  wrong = dict(state, **{"conv_in.weight": np.zeros((32, 3, 5, 5), np.float32)})
  safetensors.numpy.save_file(wrong, os.path.join(path, "diffusion_pytorch_model.safetensors"))
  with pytest.raises(ValueError, match="do not fit the network"):
    convert.from_diffusers(path)


def test_the_command_writes_a_model_folder(tmp_path):
  net, path = reference(SMALL, tmp_path)
  out = str(tmp_path / "converted")
  run = subprocess.run([sys.executable, "-m", "diffusion", "convert", path, out],
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "UNet with" in run.stdout
  model, params = models.load(out)
  compare(net, model, params, np.array([1, 500]), class_labels=np.array([2, 3]), size=16)
  again = subprocess.run([sys.executable, "-m", "diffusion", "convert", path, out],
                         capture_output=True, text=True)
  assert again.returncode == 2 and "already holds a model" in again.stderr


@pytest.mark.parametrize("name", ["digits.py", "cifar10.py", "celebahq256.py"])
def test_diffusers_config_is_the_inverse_of_the_converter(name):
  """Our configs as UNet2DModel arguments (the benchmark's PyTorch side) and back."""
  from diffusion.config import load_config
  config = load_config(os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                                    "configs", name))
  model = models.from_config(config.model)
  kwargs = convert.diffusers_config(model, config.data.image_size, config.data.channels)
  back = convert.unet_from_diffusers_config({"_class_name": "UNet2DModel", **kwargs})
  fields = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_groups", "num_classes")
  assert {f: getattr(back, f) for f in fields} == {f: getattr(model, f) for f in fields}
  if name == "digits.py":  # small enough to count: the same number of parameters
    net = UNet2DModel(**kwargs)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                            jnp.zeros((1,), jnp.int32))
    assert sum(p.numel() for p in net.parameters()) == sum(
        np.prod(s.shape) for s in jax.tree.leaves(shapes))


def test_a_converted_checkpoint_samples_with_ddpm_sample(tmp_path):
  """convert --config makes the released network a --workdir for `ddpm sample` and the others."""
  from diffusion import cli
  small = dict(SMALL, num_class_embeds=None)
  net, path = reference(small, tmp_path)
  config = tmp_path / "small.py"
  digits = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                                        "configs", "digits.py"))
  config.write_text(
      "from diffusion.config import load_config\n"
      "def get_config():\n"
      f"  config = load_config({digits!r})\n"
      "  config.data.image_size, config.data.channels = 16, 3\n"
      "  config.diffusion.num_steps = 20\n"
      "  return config\n")
  out = tmp_path / "converted"
  assert cli.main(["convert", path, str(out), "--config", str(config)]) == 0
  samples = tmp_path / "s.npz"
  assert cli.main(["sample", "--workdir", str(out), "--num", "8", "--out", str(samples),
                   "--sampler", "ddim", "--steps", "2"]) == 0
  assert np.load(samples)["arr_0"].shape == (8, 16, 16, 3)
  # Without --config the folder holds no diffusion settings: a clear error.
  assert cli.main(["convert", path, str(tmp_path / "bare")]) == 0
  assert cli.main(["sample", "--workdir", str(tmp_path / "bare"), "--num", "8", "--out",
                   str(samples)]) == 2
