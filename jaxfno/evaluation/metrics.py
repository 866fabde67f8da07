"""Scoring of a stitched reconstruction against the ground truth (SPEC §5 steps 3–6).

Pipeline (``score``): trim 2 px on every side (330 → 326); amplitude: scale the prediction so
its mean equals the ground truth's; phase: angle of each image with its own least-squares
plane ``a·x + b·y + c`` removed. Every metric is reported as ``[amplitude, phase]``:

- ``mae``, ``mse``: on the amplitude and on the plane-removed phase in radians;
- ``ssim``: scikit-image defaults (see :mod:`jaxfno.evaluation.ssim`); amplitude with
  ``data_range`` = max − min of the ground-truth amplitude, phase on ``(φ + π)/(2π)`` for both
  images with ``data_range`` 1;
- ``psnr255``: upstream-style PSNR, i.e. OpenCV's default ``cv2.PSNR`` with peak 255,
  ``20·log10(255 / (sqrt(MSE) + DBL_EPSILON))``, on the same arrays as ``mse``. The peak does
  not match the data range of either channel, so only differences between runs mean anything;
- ``frc50``: see :func:`frc_curve` and :func:`frc50`.

The ground-truth amplitude is the raw object amplitude (not divided by the patch
normalisation ν): SPEC's floor (amp MAE 0.5131) is only reproduced on that scale.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .ssim import ssim

TRIM = 2
VACUOUS_PHASE_STD = 1e-6
_DBL_EPSILON = float(np.finfo(np.float64).eps)


def mae(x, y) -> jnp.ndarray:
    """Mean absolute error over all elements. Jit-able."""
    return jnp.mean(jnp.abs(jnp.asarray(x) - jnp.asarray(y)))


def mse(x, y) -> jnp.ndarray:
    """Mean squared error over all elements. Jit-able."""
    return jnp.mean((jnp.asarray(x) - jnp.asarray(y)) ** 2)


def psnr255(x, y) -> jnp.ndarray:
    """OpenCV's default ``cv2.PSNR(x, y)``: peak 255, ``20·log10(255/(sqrt(MSE) + DBL_EPSILON))``.

    Identical inputs give ≈361.2 dB (finite), as in OpenCV. Jit-able.
    """
    return 20.0 * jnp.log10(255.0 / (jnp.sqrt(mse(x, y)) + _DBL_EPSILON))


def remove_plane(image: np.ndarray) -> np.ndarray:
    """``image`` minus its least-squares plane ``a·x + b·y + c`` (x = column, y = row index)."""
    rows, cols = np.indices(image.shape, dtype=np.float64)
    design = np.stack([cols.ravel(), rows.ravel(), np.ones(image.size)], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, image.ravel().astype(np.float64), rcond=None)
    return image - (design @ coeffs).reshape(image.shape)


def preprocess(prediction, ground_truth, trim: int = TRIM):
    """Return ``(amp_pred, amp_true, phase_pred, phase_true)``, float64, trimmed.

    The predicted amplitude is rescaled to the ground truth's mean unless its own mean is zero
    (then it is left as is, so a zero output scores as a zero output, never as NaN).
    """
    prediction = np.asarray(prediction)
    ground_truth = np.asarray(ground_truth)
    if prediction.shape != ground_truth.shape or prediction.ndim != 2:
        raise ValueError(f"preprocess: need two equal 2-D arrays, got {prediction.shape} "
                         f"and {ground_truth.shape}")
    window = (slice(trim, -trim or None),) * 2
    prediction = prediction[window].astype(np.complex128)
    ground_truth = ground_truth[window].astype(np.complex128)
    amp_pred, amp_true = np.abs(prediction), np.abs(ground_truth)
    mean_pred = amp_pred.mean()
    if mean_pred != 0:
        amp_pred = amp_pred * (amp_true.mean() / mean_pred)
    return amp_pred, amp_true, remove_plane(np.angle(prediction)), remove_plane(np.angle(ground_truth))


def frc_curve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fourier ring correlation of two real images.

    Ring binning: ``fftshift(fft2(·))`` with centred integer frequencies
    ``k = arange(n) − n//2`` per axis; a pixel belongs to ring ``round(hypot(ky, kx))``; rings
    ``0 … min(shape)//2`` are kept (the corners beyond the Nyquist circle are dropped). Per ring
    ``FRC = Re Σ F_x·conj(F_y) / sqrt(Σ|F_x|² · Σ|F_y|²)`` (signed: anticorrelation counts as
    disagreement); a ring where either image has no power scores 0.
    """
    fx = np.fft.fftshift(np.fft.fft2(x))
    fy = np.fft.fftshift(np.fft.fft2(y))
    ky, kx = (np.arange(n) - n // 2 for n in x.shape)
    ring = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(int)
    n_rings = min(x.shape) // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]

    def ring_sum(values):
        return np.bincount(ring, weights=values[keep], minlength=n_rings)

    cross = ring_sum((fx * np.conj(fy)).real)
    power = np.sqrt(ring_sum(np.abs(fx) ** 2) * ring_sum(np.abs(fy) ** 2))
    return np.divide(cross, power, out=np.zeros(n_rings), where=power > 0)


def frc50(x: np.ndarray, y: np.ndarray) -> int:
    """Index of the first ring ≥ 1 (see :func:`frc_curve`) with FRC < 0.5; the ring count if none.

    Ring 0 (the single DC pixel) is skipped: it only compares the image means, which the
    preprocessing makes equal (amplitude) or zero up to rounding (plane-removed phase).
    A constant prediction therefore scores 1; a perfect one scores ``min(shape)//2 + 1``.
    """
    below = np.flatnonzero(frc_curve(x, y)[1:] < 0.5)
    return int(below[0]) + 1 if below.size else min(x.shape) // 2 + 1


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _channel(true: np.ndarray, pred: np.ndarray, ssim_true, ssim_pred, data_range) -> dict:
    if not np.all(np.isfinite(pred)):
        return dict.fromkeys(("mae", "mse", "ssim", "psnr255", "frc50"))
    with jax.enable_x64(True):
        values = {
            "mae": mae(true, pred),
            "mse": mse(true, pred),
            "ssim": ssim(ssim_true, ssim_pred, data_range),
            "psnr255": psnr255(true, pred),
        }
        values = {k: _finite_or_none(v) for k, v in values.items()}
    values["frc50"] = frc50(true, pred)
    return values


def score(prediction, ground_truth, trim: int = TRIM) -> dict[str, Any]:
    """Score a complex stitched reconstruction against the complex ground truth (both 330²).

    Returns ``{"mae", "mse", "ssim", "psnr255", "frc50"}``, each ``[amplitude, phase]`` as plain
    Python numbers (JSON-serialisable), and ``phase_vacuous``: True when the plane-removed
    ground-truth phase has std < 1e-6 (e.g. ``set_phi`` off); the phase entries are then None
    rather than a meaningless near-perfect score. A non-finite prediction scores None
    everywhere. Runs on the host in float64 (the JAX metrics under ``jax.enable_x64``).
    """
    amp_pred, amp_true, phase_pred, phase_true = preprocess(prediction, ground_truth, trim)
    amp = _channel(amp_true, amp_pred, amp_true, amp_pred, amp_true.max() - amp_true.min())
    vacuous = bool(phase_true.std() < VACUOUS_PHASE_STD)
    if vacuous:
        phase = dict.fromkeys(amp)
    else:
        unit_true, unit_pred = ((phi + np.pi) / (2 * np.pi) for phi in (phase_true, phase_pred))
        phase = _channel(phase_true, phase_pred, unit_true, unit_pred, 1.0)
    result: dict[str, Any] = {key: [amp[key], phase[key]] for key in amp}
    result["phase_vacuous"] = vacuous
    return result


def constant_floor(ground_truth, trim: int = TRIM) -> dict[str, Any]:
    """Scores of a spatially constant prediction (amplitude 1, phase 0) on ``ground_truth``.

    After mean scaling any constant amplitude is the same prediction, and any constant phase
    becomes 0 after plane removal, so this is the collapse floor of SPEC §5 step 6 (on the
    benchmark: amp SSIM 0.2771, amp MAE 0.5131, phase SSIM 0.8428).
    """
    ground_truth = np.asarray(ground_truth)
    return score(np.ones(ground_truth.shape, np.complex128), ground_truth, trim)
