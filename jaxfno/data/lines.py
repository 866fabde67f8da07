"""The "lines" object of the grid_lines benchmark (SPEC §1.1, §1.2)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.draw import line

CANVAS = 784  # L = 2 × 392
N_SEGMENTS = 400
CROP = slice(196, 588)  # centre crop → 392 × 392
OBJECT_SIZE = CROP.stop - CROP.start
TRAIN_SEED, TEST_SEED = 1, 2  # fixed by the benchmark
SMOOTHING = ((1, 1), (2, 5), (5, 10))  # (weight, Gaussian σ) of the smoothed segments' sum


def _lines_image(rng: np.random.RandomState) -> np.ndarray:
    canvas = np.zeros((CANVAS, CANVAS))
    for _ in range(N_SEGMENTS):
        r0, c0, r1, c1 = (int(CANVAS * rng.uniform()) for _ in range(4))
        rr, cc = line(r0, c0, r1, c1)
        canvas[rr, cc] = 1
    smooth = sum(weight * gaussian_filter(canvas, sigma) for weight, sigma in SMOOTHING)
    return smooth[CROP, CROP]


def lines_amplitude(nimgs: int, seed: int) -> np.ndarray:
    """(nimgs, 392, 392) float64 amplitude, images drawn one after another from one stream.

    ``RandomState(seed)`` is the same MT19937 stream as ``np.random.seed(seed)`` followed by
    ``np.random.uniform()`` calls (upstream), without touching the global NumPy state.
    """
    rng = np.random.RandomState(seed)
    return np.stack([_lines_image(rng) for _ in range(nimgs)])


def lines_phase(amplitude: np.ndarray, set_phi: bool) -> np.ndarray:
    """φ = π·tanh((A − max A / 2) / (3·mean A)), max, mean over the whole split; 0 if off."""
    if not set_phi:
        return np.zeros_like(amplitude)
    return np.pi * np.tanh((amplitude - amplitude.max() / 2) / (3 * amplitude.mean()))
