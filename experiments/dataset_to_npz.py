"""Writes a data split of a config as an .npz of uint8 images (`arr_0`, NHWC), the reference
images of `ddpm evaluate --reference`:

  python experiments/dataset_to_npz.py --config experiments/configs/cifar10.py --split train \
      --out runs/cifar10_train.npz
  ddpm evaluate --samples samples.npz --inception pt_inception-2015-12-05-6726825d.pth \
      --reference runs/cifar10_train.npz --save-reference runs/cifar10_train_stats.npz

The images are the training pipeline's (resized and cropped to the config's
image_size, no flips), read from the same local source (nothing is downloaded).
"""

import argparse
import os

import numpy as np
import tqdm

from diffusion.config import load_config
from diffusion.data import make_source


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--split", default="train")
  parser.add_argument("--num", type=int, help="the first N images (default: all)")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  data = load_config(args.config).data
  with data.unlocked():
    data.split, data.condition = args.split, ""
  source = make_source(data)
  count = len(source) if args.num is None else min(args.num, len(source))
  images = np.stack([source[i]["x"] for i in tqdm.tqdm(range(count), desc=args.split)])
  labels = np.array([source[i].get("label", 0) for i in range(count)])
  os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
  np.savez(args.out, arr_0=images, labels=labels)
  print(f"wrote {args.out}: {images.shape} {images.dtype}")
  return args.out


if __name__ == "__main__":
  main()
