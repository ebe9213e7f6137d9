"""Measuring sample quality: Fréchet distance, KID and Inception Score on features, and the
offline digits measures (a small classifier trained on the built-in digits)."""

from diffusion.evaluation.digits import (
    DigitClassifier, DigitsEvaluator, check_images, digits_metrics, train_classifier)
from diffusion.evaluation.frechet import (
    Statistics, fid_from_features, frechet_distance, inception_score, kernel_inception_distance,
    load_statistics, save_statistics, statistics)

__all__ = ["DigitClassifier", "DigitsEvaluator", "Statistics", "check_images", "digits_metrics",
           "fid_from_features", "frechet_distance", "inception_score",
           "kernel_inception_distance", "load_statistics", "save_statistics", "statistics",
           "train_classifier"]
