"""`ddpm convert`: a released diffusers UNet2DModel folder as a model folder of this library."""

import argparse


def convert_command(args: argparse.Namespace) -> None:
  from diffusion import convert
  count = convert.convert(args.model_dir, args.out_dir, args.config)
  print(f"wrote {args.out_dir}: UNet with {count:,} parameters")


def add_parsers(commands) -> None:
  parser = commands.add_parser(
      "convert", help="convert a diffusers UNet2DModel folder into a model folder",
      description="Convert a diffusers UNet2DModel folder into a model folder of this library.")
  parser.add_argument("model_dir", help="folder with config.json and diffusion_pytorch_model.*")
  parser.add_argument("out_dir", help="new folder for model.json and params/")
  parser.add_argument("--config", help="an experiments/configs/*.py file: its data and diffusion "
                      "settings go into out_dir/config.json, and `ddpm sample --workdir out_dir` "
                      "(and the other commands) then run the converted network")
  parser.set_defaults(run=convert_command, flag_names={"out_dir": "OUT_DIR"})
