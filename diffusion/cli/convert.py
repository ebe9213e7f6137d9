"""`ddpm convert`: a released diffusers UNet2DModel folder as a model folder of this library;
`ddpm convert-inception`: the FID Inception's PyTorch weights as an .npz once."""

import argparse


def convert_command(args: argparse.Namespace) -> None:
  from diffusion import convert
  count = convert.convert(args.model_dir, args.out_dir, args.config)
  print(f"wrote {args.out_dir}: UNet with {count:,} parameters")


def convert_inception_command(args: argparse.Namespace) -> None:
  from diffusion.evaluation.inception import save_weights
  count = save_weights(args.weights, args.out)
  print(f"wrote {args.out} ({count} arrays)")


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

  parser = commands.add_parser(
      "convert-inception", help="convert the FID Inception's .pth weights into an .npz once",
      description="Convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth into an .npz that "
                  "`ddpm evaluate --inception` reads without PyTorch.")
  parser.add_argument("weights", help="pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("out", help="an .npz file")
  parser.set_defaults(run=convert_inception_command, flag_names={"out": "OUT"})
