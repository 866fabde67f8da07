"""Evaluation: stitching, SPEC §5 metrics, the collapse floor and the §6 collapse verdict."""

from .collapse import below_floor, collapse_verdict, meets_success
from .metrics import (constant_floor, frc50, frc_curve, mae, mse, preprocess, psnr255,
                      remove_plane, score)
from .ssim import ssim
from .stitch import stitch

__all__ = [
    "below_floor", "collapse_verdict", "constant_floor", "frc50", "frc_curve", "mae", "meets_success", "mse",
    "preprocess", "psnr255", "remove_plane", "score", "ssim", "stitch",
]
