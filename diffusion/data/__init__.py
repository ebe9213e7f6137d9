"""Training data: random-access sources and a deterministic, resumable loader."""

from diffusion.data.loader import Loader
from diffusion.data.sources import (
    DigitsSource, ImageFolderSource, TfdsSource, make_source, resize_and_crop)

__all__ = ["DigitsSource", "ImageFolderSource", "Loader", "TfdsSource", "make_source",
           "resize_and_crop"]
