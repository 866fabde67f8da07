"""SSIM in JAX, numerically equal to ``skimage.metrics.structural_similarity`` defaults.

The scikit-image defaults (SPEC §5) are: a 7 × 7 uniform window, K1 = 0.01, K2 = 0.03 and the
sample covariance (``use_sample_covariance=True``, i.e. the window moments are multiplied by
49/48). scikit-image filters the whole image and then crops ``(7 - 1) // 2 = 3`` pixels from every
side of the SSIM map before averaging; the cropped map only contains windows lying entirely
inside the image, so the filter's border mode never matters and a "valid" box filter gives the
same numbers. dm-pix's SSIM is a different metric (Gaussian window, population covariance).
"""

from __future__ import annotations

import jax.numpy as jnp

WIN_SIZE = 7
K1 = 0.01
K2 = 0.03


def _box_mean(z: jnp.ndarray, size: int) -> jnp.ndarray:
    """Mean over every fully contained ``size × size`` window of the last two axes."""
    rows = z.shape[-2] - size + 1
    cols = z.shape[-1] - size + 1
    z = sum(z[..., k:k + rows, :] for k in range(size))
    z = sum(z[..., :, k:k + cols] for k in range(size))
    return z / (size * size)


def ssim(x, y, data_range) -> jnp.ndarray:
    """Mean SSIM of ``x`` and ``y`` over their last two axes (leading axes are a batch).

    ``data_range`` is a scalar or broadcasts against the batch axes. Jit-able and
    differentiable; computes in the inputs' floating dtype (at least float32). Both images
    are centred on their own global mean before the window moments are formed: variances and
    covariance are shift-invariant, and centring avoids the float32 cancellation of
    ``E[x²] − E[x]²`` (the window means are shifted back for the luminance term).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    if min(x.shape[-2:]) < WIN_SIZE:
        raise ValueError(f"ssim: images must be at least {WIN_SIZE}x{WIN_SIZE}, got {x.shape}")
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    x = x.astype(dtype)
    y = y.astype(dtype)
    mx = x.mean(axis=(-2, -1), keepdims=True)
    my = y.mean(axis=(-2, -1), keepdims=True)
    xc, yc = x - mx, y - my

    ux, uy = _box_mean(xc, WIN_SIZE), _box_mean(yc, WIN_SIZE)
    cov_norm = WIN_SIZE**2 / (WIN_SIZE**2 - 1)
    vx = cov_norm * (_box_mean(xc * xc, WIN_SIZE) - ux * ux)
    vy = cov_norm * (_box_mean(yc * yc, WIN_SIZE) - uy * uy)
    vxy = cov_norm * (_box_mean(xc * yc, WIN_SIZE) - ux * uy)
    ux, uy = ux + mx, uy + my

    r = jnp.asarray(data_range, dtype)[..., None, None]
    c1 = (K1 * r) ** 2
    c2 = (K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(-2, -1))
