"""Released checkpoints in the diffusers format -> our UNet and its parameters.

The DDPM authors' CIFAR-10, CelebA-HQ and LSUN networks are distributed as
diffusers `UNet2DModel` folders: `config.json` and
`diffusion_pytorch_model.safetensors` (or `.bin`, a PyTorch pickle). Nothing
is downloaded: point `from_diffusers` at a folder on disk. Reading
`.safetensors` needs no PyTorch; `.bin` needs the optional `torch` package.

Command line: `ddpm convert DIFFUSERS_DIR OUT_DIR [--config FILE]` (`convert`) writes a
model folder (`diffusion.models.save`) that the samplers load.
"""

import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from etils import epath

from diffusion import models, paths
from diffusion.models import UNet

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32}  # little-endian, as the format stores them


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file into NumPy arrays, parsed by the `safetensors` package (whose
  NumPy loader knows no bfloat16: that comes as ml_dtypes.bfloat16 here)."""
  import safetensors
  try:
    views = safetensors.deserialize(paths.resolve(path).read_bytes())
  except Exception as e:  # SafetensorError for a damaged file
    raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
  tensors = {}
  for name, view in views:
    if view["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {view['dtype']}, which a UNet "
                       f"checkpoint does not hold ({', '.join(_DTYPES)})")
    tensors[name] = np.frombuffer(view["data"], _DTYPES[view["dtype"]]).reshape(view["shape"])
  return tensors


def _read_bin(path: epath.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(
        f"{path} is a PyTorch pickle, which needs PyTorch to read: install torch, or "
        "convert the folder to .safetensors") from None
  state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _unsupported(what: str, value: Any, supported: Any) -> ValueError:
  return ValueError(f"config.json: {what} = {value!r} cannot be represented by this UNet "
                    f"(supported: {supported})")


def unet_from_diffusers_config(config: dict[str, Any]) -> UNet:
  """The UNet equal to a diffusers `UNet2DModel` config, or a ValueError naming the difference."""
  if config.get("_class_name") != "UNet2DModel":
    raise _unsupported("_class_name", config.get("_class_name"), "'UNet2DModel'")
  get = lambda key, default: config.get(key, default) if config.get(key) is not None else default
  fixed = {"act_fn": ("silu", "swish"), "time_embedding_type": ("positional",),
           "flip_sin_to_cos": (False,), "freq_shift": (1,), "center_input_sample": (False,),
           "mid_block_scale_factor": (1,), "resnet_time_scale_shift": ("default",),
           "norm_eps": (1e-6,), "downsample_padding": (0,), "downsample_type": ("conv",),
           "upsample_type": ("conv",), "add_attention": (True,), "mid_block_type": ("UNetMidBlock2D",),
           "class_embed_type": (None,)}
  defaults = {"act_fn": "silu", "time_embedding_type": "positional", "flip_sin_to_cos": True,
              "freq_shift": 0, "center_input_sample": False, "mid_block_scale_factor": 1,
              "resnet_time_scale_shift": "default", "norm_eps": 1e-5, "downsample_padding": 1,
              "downsample_type": "conv", "upsample_type": "conv", "add_attention": True,
              "mid_block_type": "UNetMidBlock2D", "class_embed_type": None}
  for key, allowed in fixed.items():
    value = config.get(key, defaults[key])
    if value not in allowed:
      raise _unsupported(key, value, " or ".join(map(repr, allowed)))
  channels = list(config["block_out_channels"])
  ch = channels[0]
  if any(c % ch for c in channels):
    raise _unsupported("block_out_channels", channels, "multiples of the first entry")
  down, up = list(config["down_block_types"]), list(config["up_block_types"])
  if (len(down) != len(channels) or len(up) != len(channels)
      or set(down) - {"DownBlock2D", "AttnDownBlock2D"} or set(up) - {"UpBlock2D", "AttnUpBlock2D"}):
    raise _unsupported("down_block_types/up_block_types", (down, up),
                       "one DownBlock2D/AttnDownBlock2D and one UpBlock2D/AttnUpBlock2D per level")
  attn_down = [b == "AttnDownBlock2D" for b in down]
  if attn_down != [b == "AttnUpBlock2D" for b in reversed(up)]:
    raise _unsupported("up_block_types", up, "attention at the same levels as down_block_types")
  if config.get("time_embedding_dim") not in (None, 4 * ch):
    raise _unsupported("time_embedding_dim", config["time_embedding_dim"], f"4 * {ch}")
  groups = get("norm_num_groups", 32)
  if get("attn_norm_num_groups", groups) != groups:
    raise _unsupported("attn_norm_num_groups", config["attn_norm_num_groups"], groups)
  size = config.get("sample_size", 32)
  size = size[0] if isinstance(size, (list, tuple)) else size
  out_channels = config.get("out_channels", 3)
  return UNet(
      ch=ch, ch_mult=tuple(c // ch for c in channels),
      num_res_blocks=config.get("layers_per_block", 2),
      attn_resolutions=tuple(size // 2**i for i, a in enumerate(attn_down) if a),
      dropout=config.get("dropout", 0.0), head_dim=config.get("attention_head_dim"),
      num_classes=config.get("num_class_embeds") or 0,
      cond_channels=config.get("in_channels", 3) - out_channels if config.get("in_channels", 3) > out_channels else 0,
      out_channels=out_channels, num_groups=groups)


def diffusers_config(model: UNet, image_size: int, channels: int) -> dict[str, Any]:
  """The diffusers `UNet2DModel` keyword arguments of the same network as `model` (2-D data),
  the inverse of `unet_from_diffusers_config`: for side-by-side runs against PyTorch."""
  if model.num_heads != 1 and not model.head_dim:
    raise ValueError("diffusers_config: set head_dim instead of num_heads (diffusers fixes the "
                     "width of a head)")
  levels = len(model.ch_mult)
  attn = [image_size // 2**i in model.attn_resolutions for i in range(levels)]
  out_channels = (model.out_channels or channels) * (2 if model.learned_variance else 1)
  return dict(
      sample_size=image_size, in_channels=channels + model.cond_channels,
      out_channels=out_channels,
      layers_per_block=model.num_res_blocks,
      block_out_channels=tuple(model.ch * m for m in model.ch_mult),
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
      downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
      norm_num_groups=model.num_groups, attention_head_dim=model.head_dim, act_fn="silu",
      mid_block_scale_factor=1, center_input_sample=False, time_embedding_type="positional",
      dropout=model.dropout, num_class_embeds=model.num_classes or None)


def _dense(w, b):
  return {"kernel": w.T, "bias": b}


def _conv(w, b):  # OI(spatial) -> (spatial)IO
  return {"kernel": np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)), "bias": b}


def _norm(w, b):
  return {"scale": w, "bias": b}


def _resnet(sd, prefix):
  p = lambda name: (sd.pop(f"{prefix}.{name}.weight"), sd.pop(f"{prefix}.{name}.bias"))
  block = {"norm1": _norm(*p("norm1")), "conv1": _conv(*p("conv1")),
           "temb_proj": _dense(*p("time_emb_proj")), "norm2": _norm(*p("norm2")),
           "conv2": _conv(*p("conv2"))}
  if f"{prefix}.conv_shortcut.weight" in sd:
    w, b = p("conv_shortcut")
    block["shortcut"] = _dense(w.reshape(w.shape[:2]), b)
  return block


def _attention(sd, prefix):
  # Older diffusers files name the projections query/key/value/proj_attn.
  names = {"q": ("to_q", "query"), "k": ("to_k", "key"), "v": ("to_v", "value"),
           "proj_out": ("to_out.0", "proj_attn")}
  block = {"norm": _norm(sd.pop(f"{prefix}.group_norm.weight"), sd.pop(f"{prefix}.group_norm.bias"))}
  for ours, theirs in names.items():
    name = next((n for n in theirs if f"{prefix}.{n}.weight" in sd), theirs[0])
    w, b = sd.pop(f"{prefix}.{name}.weight"), sd.pop(f"{prefix}.{name}.bias")
    block[ours] = _dense(w.reshape(w.shape[:2]), b)
  return block


def params_from_diffusers(model: UNet, state: dict[str, np.ndarray]) -> dict[str, Any]:
  """Maps a diffusers UNet2DModel state dict onto the parameter tree of `model`."""
  sd = {k: np.asarray(v, np.float32) for k, v in state.items()}
  levels = len(model.ch_mult)
  try:
    params = {
        "conv_in": _conv(sd.pop("conv_in.weight"), sd.pop("conv_in.bias")),
        "temb_dense0": _dense(sd.pop("time_embedding.linear_1.weight"),
                              sd.pop("time_embedding.linear_1.bias")),
        "temb_dense1": _dense(sd.pop("time_embedding.linear_2.weight"),
                              sd.pop("time_embedding.linear_2.bias")),
        "mid_res_0": _resnet(sd, "mid_block.resnets.0"),
        "mid_attn": _attention(sd, "mid_block.attentions.0"),
        "mid_res_1": _resnet(sd, "mid_block.resnets.1"),
        "norm_out": _norm(sd.pop("conv_norm_out.weight"), sd.pop("conv_norm_out.bias")),
        "conv_out": _conv(sd.pop("conv_out.weight"), sd.pop("conv_out.bias")),
    }
    if model.num_classes:
      table = sd.pop("class_embedding.weight")  # no null class: it embeds to zero
      params["class_embed"] = {"embedding": np.concatenate([table, np.zeros_like(table[:1])])}
    for level in range(levels):
      for block in range(model.num_res_blocks):
        params[f"down_{level}_res_{block}"] = _resnet(sd, f"down_blocks.{level}.resnets.{block}")
        if f"down_blocks.{level}.attentions.{block}.group_norm.weight" in sd:
          params[f"down_{level}_attn_{block}"] = _attention(sd, f"down_blocks.{level}.attentions.{block}")
      if level != levels - 1:
        params[f"down_{level}_downsample"] = {"conv": _conv(
            sd.pop(f"down_blocks.{level}.downsamplers.0.conv.weight"),
            sd.pop(f"down_blocks.{level}.downsamplers.0.conv.bias"))}
      up = f"up_blocks.{levels - 1 - level}"
      for block in range(model.num_res_blocks + 1):
        params[f"up_{level}_res_{block}"] = _resnet(sd, f"{up}.resnets.{block}")
        if f"{up}.attentions.{block}.group_norm.weight" in sd:
          params[f"up_{level}_attn_{block}"] = _attention(sd, f"{up}.attentions.{block}")
      if level != 0:
        params[f"up_{level}_upsample"] = {"conv": _conv(
            sd.pop(f"{up}.upsamplers.0.conv.weight"), sd.pop(f"{up}.upsamplers.0.conv.bias"))}
  except KeyError as e:
    raise ValueError(f"the weights lack {e.args[0]}, which the config's network has") from None
  if sd:
    raise ValueError(f"the weights hold {len(sd)} tensors this network has no place for, "
                     f"e.g. {sorted(sd)[:3]}")
  return params


def _check_shapes(model: UNet, params, sample_shape):
  want = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros(sample_shape), jnp.zeros(sample_shape[:1], jnp.int32),
      **({"y": jnp.zeros(sample_shape[:1], jnp.int32)} if model.num_classes else {}),
      **({"cond": jnp.zeros(sample_shape[:-1] + (model.cond_channels,))} if model.cond_channels else {})))["params"]
  got_paths = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(params)}
  want_paths = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(want)}
  if got_paths != want_paths:
    diff = sorted(set(got_paths.items()) ^ set(want_paths.items()))[:4]
    raise ValueError(f"the converted parameters do not fit the network: {diff}")


def from_diffusers(model_dir: str) -> tuple[UNet, dict[str, Any]]:
  """(model, params) equal to the diffusers UNet2DModel saved in `model_dir`.

  `model.apply({"params": params}, x, t)` with x NHWC in [-1, 1] and t int
  [B] gives the ε of the original network on x in NCHW.

  Raises:
    FileNotFoundError: the folder, its config.json or its weights are missing.
    ValueError: the config or the weights describe a network this UNet cannot be.
  """
  folder = paths.resolve(model_dir, "model_dir")
  if not folder.is_dir():
    raise FileNotFoundError(f"model_dir {model_dir!r} is not a folder")
  if not (folder / "config.json").exists():
    raise FileNotFoundError(f"{model_dir} has no config.json: not a diffusers model folder "
                            "(for a pipeline, point at its unet/ subfolder)")
  config = json.loads((folder / "config.json").read_text())
  weights = [folder / w for w in WEIGHTS if (folder / w).exists()]
  if not weights:
    raise FileNotFoundError(f"{model_dir} has none of the weight files {', '.join(WEIGHTS)}")
  model = unet_from_diffusers_config(config)
  state = read_safetensors(weights[0]) if weights[0].suffix == ".safetensors" else _read_bin(weights[0])
  params = params_from_diffusers(model, state)
  size = config.get("sample_size", 32)
  size = size if isinstance(size, (list, tuple)) else (size, size)
  _check_shapes(model, params, (1, *size, config.get("out_channels", 3)))
  return model, jax.tree.map(jnp.asarray, params)


def convert(model_dir: str, out_dir: str, config: str | None = None) -> int:
  """Writes the diffusers UNet2DModel folder `model_dir` as a model folder `out_dir`
  (model.json and params/, `models.save`); with `config` (an experiments/configs/*.py file),
  its data and diffusion settings go into out_dir/config.json, so that `ddpm sample` and the
  other commands run the converted network from `out_dir`. Returns the parameter count."""
  model, params = from_diffusers(model_dir)
  settings = None
  if config:
    from diffusion.config import load_config
    from diffusion.models.config import model_kwargs
    settings = load_config(config)
    with settings.unlocked():
      settings.model = model_kwargs(model)
  models.save(out_dir, model, params)
  if settings is not None:
    paths.write_bytes(paths.resolve(out_dir, "`out_dir`") / "config.json",
                      settings.to_json(indent=2).encode())
  return sum(p.size for p in jax.tree.leaves(params))
