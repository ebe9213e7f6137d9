"""`ddpm inpaint | denoise | enhance | anomaly`: the applications on a trained run."""

import os

from diffusion.applications import commands as apps
from diffusion.cli.common import sampler_arguments, seed


def _writes(args) -> list[tuple[str, str]]:
  """Every file an application writes: --out and the files beside it."""
  out = os.fspath(args.out)
  base, ext = os.path.splitext(out)
  if args.command == "anomaly":
    return [("--out", out), ("the maps beside --out", base + "_maps.npz")]
  files = [("--out", out)]
  if ext.lower() == ".npz":
    files.append(("the preview beside --out", base + ".png"))
  elif args.command == "denoise" and args.num_samples > 1:
    files += [("the mean and std beside --out", base + ".npz"),
              ("the std map beside --out", base + "_std.png")]
  else:
    files += [(f"sample {i} beside --out", f"{base}_{i}{ext}") for i in range(1, args.num_samples)]
  return files


def add_parsers(commands) -> None:
  """The applications' parsers, on the `ddpm` subparsers `commands`."""

  def common(name, help_text, run):
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--workdir", required=True, help="a training run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--class", dest="class_label", type=int,
                        help="class-conditional models: condition on class C (default: the null "
                             "class, if the run was trained with label dropout)")
    parser.set_defaults(run=run, inputs=["workdir", "image", "mask", "images"],
                        outputs=[("out", False)], writes=_writes)
    return parser

  example = "a PNG (images) or an .npy/.npz array of config.data.shape in the data's units"
  out = "a PNG (images) or an .npz (any data; a preview PNG beside it)"
  inpaint = common("inpaint", "fill the unknown region of --mask (RePaint; point sets: motif "
                   "scaffolding)", apps.inpaint_command)
  inpaint.add_argument("--image", required=True, help=example)
  inpaint.add_argument("--mask", required=True,
                       help="PNG: white = keep, black = generate; or an .npy of bools over the "
                            "data's positions (config.data.shape[:-1]), True = keep")
  inpaint.add_argument("--out", required=True, help=out)
  inpaint.add_argument("--steps", type=int,
                       help="chain length, respaced (default: 250 as RePaint, or T if fewer)")
  inpaint.add_argument("--jump-length", type=int, default=10)
  inpaint.add_argument("--resamplings", type=int, default=10)
  inpaint.add_argument("--num-samples", type=int, default=1)

  denoise = common("denoise", "denoise data with Gaussian noise of std --sigma",
                   apps.denoise_command)
  denoise.add_argument("--image", required=True, help=example)
  denoise.add_argument("--sigma", type=float, required=True,
                       help="noise std: uint8 data in units of the [0, 1] range, in (0, 1]; "
                            "float data in its own units")
  denoise.add_argument("--out", required=True, help=out)
  denoise.add_argument("--num-samples", type=int, default=1,
                       help="> 1: also the per-element mean and std (out.npz, out_std.png)")
  sampler_arguments(denoise, guidance=False)

  enhance = common("enhance", "enhance degraded data with a conditioned model",
                   apps.enhance_command)
  enhance.add_argument("--image", required=True,
                       help="the degraded example: " + example + " (cond_channels channels)")
  enhance.add_argument("--out", required=True, help=out)
  enhance.add_argument("--num-samples", type=int, default=1)
  sampler_arguments(enhance, guidance=False)

  anomaly = common("anomaly", "score examples by partial diffusion and reconstruction",
                   apps.anomaly_command)
  anomaly.add_argument("--images", required=True,
                       help="a folder of images (normal/ and anomalous/ subfolders give labels) "
                            "or an .npz (x [N, ...] in the data's units, optional labels)")
  anomaly.add_argument("--out", required=True, help="scores.csv (and scores_maps.npz)")
  anomaly.add_argument("--at-step", type=int, help="diffuse to this step (default T/4)")
  sampler_arguments(anomaly, guidance=False)
