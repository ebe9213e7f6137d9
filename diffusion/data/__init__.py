"""Training data: random-access sources and a deterministic, resumable loader."""

from diffusion.data.loader import Loader
from diffusion.data.sources import (
    DEGRADATIONS, DegradedSource, DigitsSource, ImageFolderSource, PairedFolderSource,
    TfdsSource, degrade, digits_split_indices, make_source)
from diffusion.images import resize_and_crop

__all__ = ["DEGRADATIONS", "DegradedSource", "DigitsSource", "ImageFolderSource", "Loader",
           "PairedFolderSource", "TfdsSource", "degrade", "digits_split_indices", "make_source",
           "resize_and_crop"]
