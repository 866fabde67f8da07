"""Kernels of the generator's layers: how a 3×3 convolution and a Fourier layer's mode mixing
and transforms are computed. Each variant computes the same function up to float rounding
(tests check it); which one runs is an :class:`jaxfno.execution.ExecutionConfig` choice, passed
to the layers' constructors. Measurements: ``docs/performance.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CONV3X3_IMPLS = ("xla", "im2col")
SPECTRAL_TRANSFORMS = ("fft", "dft")
SPECTRAL_MIXINGS = ("complex", "real")

def _conv3x3_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted(x: jax.Array) -> list[jax.Array]:
    """The nine zero-padded shifts of ``x`` that a 3×3 kernel's entries (dy, dx) read."""
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]


def conv3x3(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
    """3×3 convolution, zero padding 1, no bias. ``xla``: ``lax.conv_general_dilated`` (a grouped
    convolution when the member axis is vmapped); ``im2col``: the nine shifted copies side by
    side and one matmul (a batched matmul under vmap)."""
    if impl == "im2col":
        return jnp.concatenate(_shifted(x), axis=-1) @ kernel.reshape(-1, kernel.shape[3])  # (dy, dx, c)
    if impl != "xla":
        raise ValueError(f"conv3x3 implementation {impl!r} is not one of {CONV3X3_IMPLS}")
    return _conv3x3_xla(x, kernel)


def mix_stacked(x: jax.Array, weight_re: jax.Array, weight_im: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of ``Σ_i x[x, y, b, i] · w[x, y, i, o]``, modes-major, from the
    input's real and imaginary parts stacked on the batch axis (``x``: (x, y, 2·B, i), real
    parts first). Two matmuls that read each weight part once, where the four products
    (re, im) × (re, im) read each part twice: the mixing is bound by reading the weights and
    writing their gradients (M = batch)."""
    batch = x.shape[2] // 2
    by_re = jnp.einsum("xybi,xyio->xybo", x, weight_re)  # [x_re·w_re; x_im·w_re]
    by_im = jnp.einsum("xybi,xyio->xybo", x, weight_im)  # [x_re·w_im; x_im·w_im]
    return (by_re[:, :, :batch] - by_im[:, :, batch:],
            by_im[:, :, :batch] + by_re[:, :, batch:])


def mix_modes(x_ft: jax.Array, weight_re: jax.Array, weight_im: jax.Array, mixing: str) -> jax.Array:
    """``y[b, x, y, o] = Σ_i x_ft[b, x, y, i] · w[x, y, i, o]`` with ``w = weight_re + i·weight_im``:
    one complex einsum (``complex``) or two real matmuls (``real``, :func:`mix_stacked`)."""
    if mixing == "complex":
        return jnp.einsum("bxyi,xyio->bxyo", x_ft, jax.lax.complex(weight_re, weight_im))
    stacked = jnp.transpose(jnp.concatenate([x_ft.real, x_ft.imag]), (1, 2, 0, 3))
    y = jax.lax.complex(*mix_stacked(stacked, weight_re, weight_im))
    return jnp.transpose(y, (2, 0, 1, 3))


def _dft_tables(n: int, freqs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2π·f·t/n, shape (len(freqs), n), float32; f·t is reduced mod n exactly."""
    angle = 2 * np.pi * ((np.asarray(freqs)[:, None] * np.arange(n)[None, :]) % n) / n
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def _einsum(spec: str, *operands) -> jax.Array:
    return jnp.einsum(spec, *operands, precision=jax.lax.Precision.HIGHEST)


def forward_dft(x: jax.Array, rows: list[int], cols: int) -> jax.Array:
    """``rfft2(x)[:, rows, :cols]`` modes-major, its real and imaginary parts stacked on the
    batch axis as :func:`mix_stacked` reads them: (row, col, 2·b, c). One matmul along W with
    the stacked cosine and sine tables, one along H that contracts the (cosine, sine) parts
    too."""
    _, height, width, _ = x.shape
    cos_w, sin_w = _dft_tables(width, list(range(cols)))
    cos_h, sin_h = _dft_tables(height, rows)
    parts = _einsum("bhwc,pkw->hpkbc", x, np.stack([cos_w, sin_w]))  # Σ_w x·e^(−iφ) = a − i·s
    table = np.stack([np.stack([cos_h, -sin_h]), np.stack([-sin_h, -cos_h])])  # (re|im, a|s, row, h)
    spectrum = _einsum("hpkbc,qprh->rkqbc", parts, table)
    return spectrum.reshape(len(rows), cols, -1, x.shape[-1])


def inverse_dft(y_re: jax.Array, y_im: jax.Array, rows: list[int], height: int,
                 width: int) -> jax.Array:
    """``irfft2`` (s = (height, width)) of the spectrum that holds ``y`` (modes-major, as from
    :func:`forward_dft`) at ``rows`` × the first columns and zeros elsewhere: an inverse DFT
    along H, then the Hermitian half-spectrum sum along W, where columns other than 0 and
    width/2 stand for their conjugates too and only the real part of those two is read."""
    cols = y_re.shape[1]
    cos_h, sin_h = _dft_tables(height, rows)
    table_h = np.stack([np.stack([cos_h, -sin_h]), np.stack([sin_h, cos_h])])  # (re|im out, re|im in, row, h)
    z = _einsum("prkbo,qprh->qhkbo", jnp.stack([y_re, y_im]), table_h)
    cos_w, sin_w = _dft_tables(width, list(range(cols)))
    k = np.arange(cols)[:, None]
    weight = np.where((k == 0) | (2 * k == width), 1.0, 2.0).astype(np.float32) / (height * width)
    return _einsum("qhkbo,qkw->bhwo", z, np.stack([cos_w, -sin_w]) * weight)

