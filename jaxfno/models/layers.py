"""Layers and residual blocks of the generators (SPEC §3.1–3.2), channels-last (B, H, W, C).

Initialisation follows PyTorch's defaults so that a JAX run starts from the same distribution as
the upstream PyTorch model: every conv weight and bias is uniform in ±1/sqrt(fan_in), with
PyTorch's fan_in conventions (Conv2d: in·kh·kw; ConvTranspose2d: out·kh·kw, because PyTorch
stores its weight as (in, out, kh, kw) and reads fan_in from dim 1).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfno.config import ModelConfig

# Execution choices: how a function is computed, not which function (all choices agree up to
# float rounding; tests check it). Each is read from the environment when a function is traced.
CONV3X3_IMPLS = ("auto", "xla", "im2col", "taps")
CPU_CONV_ENGINES = ("eigen", "ynnpack")
SPECTRAL_MIXINGS = ("complex", "real")
SPECTRAL_TRANSFORMS = ("fft", "dft")


def env_choice(variable: str, choices: tuple[str, ...], default: str) -> str:
    """The execution choice set by ``$variable`` (``default`` when unset), checked against ``choices``."""
    value = os.environ.get(variable) or default
    if value not in choices:
        raise ValueError(f"{variable}={value!r} is not one of {choices}")
    return value


def conv3x3_impl() -> str:
    """How :class:`Conv3x3` is computed. ``xla``: ``lax.conv_general_dilated``, which XLA turns
    into a grouped convolution when the member axis is vmapped. ``im2col``: the nine shifted
    copies of the input side by side on the channel axis and one matmul, which stays a
    (batched) matmul under vmap. ``taps``: the nine shifted copies multiplied by their kernel
    taps and summed over the broadcast input channels, one fused elementwise loop, with
    ``xla``'s gradients (custom VJP). ``auto`` (the default): ``taps`` on the CPU for
    convolutions of at most :data:`SMALL_CONV3X3` input × output channels, ``xla`` otherwise.
    ``$JAXFNO_CONV3X3`` chooses."""
    return env_choice("JAXFNO_CONV3X3", CONV3X3_IMPLS, "auto")


# XLA:CPU's convolution runs at ~4 GFLOP/s with a handful of channels. Forward, batch 16 on the
# 2-core CPU: 64×64, 4→4 channels 4.2 ms (taps 0.84 ms), 1→4 2.9 ms (0.13), 8→4 5.9 ms (1.8),
# 8→8 3.0 ms (1.7); at 32→32 taps loses (34 ms against 6.9). This is the CI/smoke model's size
# and the reduced study's (width 8), whose full validation passes are mostly convolutions.
SMALL_CONV3X3 = 64


def _conv3x3_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted(x: jax.Array) -> list[jax.Array]:
    """The nine zero-padded shifts of ``x`` that a 3×3 kernel's taps (dy, dx) read."""
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]


@jax.custom_vjp
def _conv3x3_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
    taps = kernel.reshape(9, *kernel.shape[2:])
    return sum(jnp.sum(shift[..., None] * tap, axis=-2) for shift, tap in zip(_shifted(x), taps))


def _conv3x3_taps_fwd(x, kernel):
    return _conv3x3_taps(x, kernel), (x, kernel)


def _conv3x3_taps_bwd(residuals, grad):
    # Autodiff of the broadcast form builds (…, in, out) intermediates: 46 ms against XLA's
    # 5 ms for the 4→4 case above.
    return jax.vjp(_conv3x3_xla, *residuals)[1](grad)


_conv3x3_taps.defvjp(_conv3x3_taps_fwd, _conv3x3_taps_bwd)


def spectral_mixing() -> str:
    """How :class:`SpectralConv2d` applies its per-mode complex matrices. ``complex``: one
    complex einsum. ``real``: two real matmuls batched over the modes, modes-major
    (:func:`_mix_stacked`). On the 2-core CPU XLA's complex matmul is slow: forward + backward
    of the 8×8×256 bottleneck-level mixing (40 modes) took 39.5 ms complex against 16.9 ms
    real (then as four matmuls), 12×9 modes at 128 channels 22.3 against 12.9 ms.
    ``$JAXFNO_SPECTRAL_MIX`` chooses; default ``real`` on the CPU, ``complex`` elsewhere (one
    GPU kernel instead of two)."""
    return env_choice("JAXFNO_SPECTRAL_MIX", SPECTRAL_MIXINGS,
                   "real" if jax.default_backend() == "cpu" else "complex")


def spectral_transform() -> str:
    """How :class:`SpectralConv2d` goes to its kept Fourier modes and back. ``fft``: rfft2 of
    the whole map, the kept block cut out, zero-padded back, irfft2. ``dft``: the kept modes
    only, as matmuls with their cosine and sine tables (separable: along W, then H; and back),
    mixed by :func:`_mix_stacked` whatever :func:`spectral_mixing` says. Measured forward +
    backward on the 2-core CPU, batch 16: 64×64×32 with 12×12 modes 30.5 ms fft against 13.5
    ms dft, 8×8×256 with 6×5 modes 16.4 against 12.8 ms, equal (±2 ms) at the levels between;
    the two agree to 3e-7 relative. Stacking the cosine and sine tables (two matmuls per
    direction instead of six) took the five layers' forward + backward from 59–65 to 52–58 ms.
    ``$JAXFNO_SPECTRAL_TRANSFORM`` chooses; default ``dft`` on the CPU, ``fft`` elsewhere
    (cuFFT is fast, and GPU matmuls would need full float32 precision, which the dft tables
    request)."""
    return env_choice("JAXFNO_SPECTRAL_TRANSFORM", SPECTRAL_TRANSFORMS,
                      "dft" if jax.default_backend() == "cpu" else "fft")


def compiler_options() -> dict[str, str] | None:
    """XLA options for every program that runs the generator. On the CPU, jaxlib 0.10 hands
    convolutions to YNNPACK, which runs each one on a single thread; measured on the 2-core CPU
    (batch 16, 64×64, 32→32 channels, forward + both gradients) 70 ms against 34 ms for XLA's
    own multi-threaded (Eigen) convolution, and the full generator's forward + backward 1011 ms
    against 608 ms. So on the CPU YNNPACK is kept for matmuls and reductions only;
    ``$JAXFNO_CPU_CONV=ynnpack`` restores jaxlib's default. Without YNNPACK's reductions XLA
    splits every large sum into a materialised elementwise part and a tree of reduce-windows:
    the squared norm of 16.7 M parameters took 28–33 ms instead of 2.5 ms, and the training
    step (gradient norms, bias gradients) 0.60 s instead of 0.565 s. YNNPACK's elementwise
    fusions made the step slower (0.69 s). Other backends: no options."""
    engine = env_choice("JAXFNO_CPU_CONV", CPU_CONV_ENGINES, "eigen")
    if jax.default_backend() != "cpu" or engine == "ynnpack":
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def execution_choices() -> dict:
    """The execution choices in effect, for run histories and benchmark results."""
    return {"conv3x3": conv3x3_impl(), "spectral_transform": spectral_transform(),
            "spectral_mixing": spectral_mixing(), "xla_options": compiler_options(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def _mix_stacked(x: jax.Array, weight_re: jax.Array, weight_im: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of ``Σ_i x[x, y, b, i] · w[x, y, i, o]``, modes-major, from the
    input's real and imaginary parts stacked on the batch axis (``x``: (x, y, 2·B, i), real
    parts first). Two matmuls that read each weight part once, where the four products
    (re, im) × (re, im) read each part twice: the mixing is bound by reading the weights and
    writing their gradients (M = batch), and forward + backward of the five Fourier layers'
    mixing on the 2-core CPU took 14.5 ms against 40.6 ms."""
    batch = x.shape[2] // 2
    by_re = jnp.einsum("xybi,xyio->xybo", x, weight_re)  # [x_re·w_re; x_im·w_re]
    by_im = jnp.einsum("xybi,xyio->xybo", x, weight_im)  # [x_re·w_im; x_im·w_im]
    return (by_re[:, :, :batch] - by_im[:, :, batch:],
            by_im[:, :, :batch] + by_re[:, :, batch:])


def mix_modes(x_ft: jax.Array, weight_re: jax.Array, weight_im: jax.Array) -> jax.Array:
    """``y[b, x, y, o] = Σ_i x_ft[b, x, y, i] · w[x, y, i, o]`` with ``w = weight_re + i·weight_im``
    (computed as :func:`spectral_mixing` chooses)."""
    if spectral_mixing() == "complex":
        return jnp.einsum("bxyi,xyio->bxyo", x_ft, jax.lax.complex(weight_re, weight_im))
    stacked = jnp.transpose(jnp.concatenate([x_ft.real, x_ft.imag]), (1, 2, 0, 3))
    y = jax.lax.complex(*_mix_stacked(stacked, weight_re, weight_im))
    return jnp.transpose(y, (2, 0, 1, 3))


def _dft_tables(n: int, freqs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2π·f·t/n, shape (len(freqs), n), float32; f·t is reduced mod n exactly."""
    angle = 2 * np.pi * ((np.asarray(freqs)[:, None] * np.arange(n)[None, :]) % n) / n
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def _einsum(spec: str, *operands) -> jax.Array:
    return jnp.einsum(spec, *operands, precision=jax.lax.Precision.HIGHEST)


def _forward_dft(x: jax.Array, rows: list[int], cols: int) -> jax.Array:
    """``rfft2(x)[:, rows, :cols]`` modes-major, its real and imaginary parts stacked on the
    batch axis as :func:`_mix_stacked` reads them: (row, col, 2·b, c). One matmul along W with
    the stacked cosine and sine tables, one along H that contracts the (cosine, sine) parts
    too."""
    _, height, width, _ = x.shape
    cos_w, sin_w = _dft_tables(width, list(range(cols)))
    cos_h, sin_h = _dft_tables(height, rows)
    parts = _einsum("bhwc,pkw->hpkbc", x, np.stack([cos_w, sin_w]))  # Σ_w x·e^(−iφ) = a − i·s
    table = np.stack([np.stack([cos_h, -sin_h]), np.stack([-sin_h, -cos_h])])  # (re|im, a|s, row, h)
    spectrum = _einsum("hpkbc,qprh->rkqbc", parts, table)
    return spectrum.reshape(len(rows), cols, -1, x.shape[-1])


def _inverse_dft(y_re: jax.Array, y_im: jax.Array, rows: list[int], height: int,
                 width: int) -> jax.Array:
    """``irfft2`` (s = (height, width)) of the spectrum that holds ``y`` (modes-major, as from
    :func:`_forward_dft`) at ``rows`` × the first columns and zeros elsewhere: an inverse DFT
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


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, written as PyTorch's default ``F.gelu`` computes it. ``jax.nn.gelu``
    uses erfc, whose branches made forward + backward of a 16×64×64×32 map 1.3–2× slower on the
    CPU; the two agree to 1e-6."""
    return 0.5 * x * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))


def _uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class SpectralConv2d(nnx.Module):
    """Fourier layer: rfft2 → per-mode complex in×out matrix on a block of modes → irfft2.

    Weights are two real float32 arrays ``weight_re``/``weight_im`` (SPEC §3.1: complex leaves
    would receive conjugate gradients). Each part is N(0, 1/(2·in)), i.e. the SPEC's
    "N(0, 1/(2·in))" is read as a variance, so that E|w|² = 1/in — the distribution of PyTorch's
    ``torch.randn(..., dtype=cfloat) / sqrt(in)``.

    ``upstream``: weight allocated as (in, out, m, m), stored as (m, m, in, out) (as conv kernels
    are stored HWIO, not PyTorch's OIHW): the per-mode matrices are then the batch of the mode
    contraction as it is. With the (in, out, m, m) order XLA transposes the weights and their
    gradients every step; on the CPU the Fourier layers' forward + backward went from 198 to
    140 ms, and on an H200 transposes of matching sizes took ≈ 0.9 ms of a 3.4 ms step. Rows 0…mh−1 and
    columns 0…mw−1 of the rfft2 spectrum with mh = min(m, H), mw = min(m, W//2+1). At full
    resolution only ky ≥ 0 passes. The values are drawn in the (in, out, m, m) order, so a seed
    gives the same weights as it did before the storage order changed.

    ``symmetric`` (textbook FNO): weight (in, out, 2·(m//2), m//2+1), stored likewise as
    (2·(m//2), m//2+1, in, out). Rows 0…m//2−1 of the weight
    act on ky = 0…m//2−1 and rows m//2… on ky = −m//2…−1, so a weight row always means the same
    frequency; columns are kx = 0…m//2. On a small map the row count per sign is capped by H//2
    and the columns by W//2+1, taking the lowest |ky| rows of each sign.

    Mode counts are capped by the feature map at call time (shapes are static under jit).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int,
                 variant: str = "upstream", *, rngs: nnx.Rngs):
        if variant not in ModelConfig.SPECTRAL:
            raise ValueError(f"spectral variant {variant!r} is not one of {ModelConfig.SPECTRAL}")
        min_modes = 1 if variant == "upstream" else 2
        if modes < min_modes:
            raise ValueError(f"{variant} spectral conv needs modes >= {min_modes}, got {modes}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.modes, self.variant = modes, variant
        half = modes // 2
        shape = (in_channels, out_channels) + (
            (modes, modes) if variant == "upstream" else (2 * half, half + 1))
        std = 1.0 / math.sqrt(2 * in_channels)

        def draw():  # (in, out, m, m) → (m, m, in, out)
            return jnp.transpose(std * jax.random.normal(rngs.params(), shape, jnp.float32), (2, 3, 0, 1))

        self.weight_re = nnx.Param(draw())
        self.weight_im = nnx.Param(draw())

    def kept_modes(self, height: int, width: int) -> tuple[int, int]:
        """(rows per frequency sign, columns) of the spectrum used on an H×W map.
        For ``upstream`` there is one "sign" block (rows 0…mh−1)."""
        if self.variant == "upstream":
            return min(self.modes, height), min(self.modes, width // 2 + 1)
        half = self.modes // 2
        return min(half, height // 2), min(half + 1, width // 2 + 1)

    def reachable_box(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the smallest leading block of the stored weight that holds every
        entry used on an H×W map; entries outside it never receive a gradient. ``symmetric``
        keeps all rows (its negative-frequency rows are the last ones)."""
        rows, cols = self.kept_modes(height, width)
        return (rows if self.variant == "upstream" else self.weight_re.shape[0]), cols

    def used_weight_entries(self, height: int, width: int) -> int:
        """Complex weight entries that influence the output on an H×W map."""
        rows, cols = self.kept_modes(height, width)
        signs = 1 if self.variant == "upstream" else 2
        return self.in_channels * self.out_channels * signs * rows * cols

    def __call__(self, x: jax.Array) -> jax.Array:
        _, height, width, _ = x.shape
        rows, cols = self.kept_modes(height, width)
        # symmetric: the weight's last `tail` rows act on ky = −tail…−1, the end of the spectrum
        tail = rows if self.variant == "symmetric" else 0
        freq_rows = list(range(rows)) + list(range(height - tail, height))
        w_re, w_im = (jnp.concatenate([w[:rows, :cols], w[w.shape[0] - tail:, :cols]])
                      for w in (self.weight_re[...], self.weight_im[...]))
        if spectral_transform() == "dft":
            spectrum = _forward_dft(x, freq_rows, cols)
            return _inverse_dft(*_mix_stacked(spectrum, w_re, w_im), freq_rows, height, width)
        x_ft = jnp.fft.rfft2(x, axes=(1, 2))[:, :, :cols]
        y = mix_modes(jnp.concatenate([x_ft[:, :rows], x_ft[:, height - tail:]], axis=1), w_re, w_im)
        gap = jnp.zeros((y.shape[0], height - rows - tail) + y.shape[2:], y.dtype)
        y = jnp.concatenate([y[:, :rows], gap, y[:, rows:]], axis=1)
        y = jnp.pad(y, ((0, 0), (0, 0), (0, width // 2 + 1 - cols), (0, 0)))
        return jnp.fft.irfft2(y, s=(height, width), axes=(1, 2))


class Conv3x3(nnx.Module):
    """3×3 conv, zero padding 1, bias (PyTorch ``Conv2d(in, out, 3, padding=1)``)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        fan_in = in_channels * 9
        self.kernel = nnx.Param(_uniform(rngs.params(), (3, 3, in_channels, out_channels), fan_in))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_channels,), fan_in))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        impl = conv3x3_impl()
        if impl == "auto":
            small = kernel.shape[2] * kernel.shape[3] <= SMALL_CONV3X3
            impl = "taps" if small and jax.default_backend() == "cpu" else "xla"
        if impl == "im2col":
            y = jnp.concatenate(_shifted(x), axis=-1) @ kernel.reshape(-1, kernel.shape[3])  # (dy, dx, c)
        elif impl == "taps":
            y = _conv3x3_taps(x, kernel)
        else:
            y = _conv3x3_xla(x, kernel)
        return y + self.bias[...]


class Down2x2(nnx.Module):
    """2×2 stride-2 conv (PyTorch ``Conv2d(in, out, 2, stride=2)``). The patches do not overlap,
    so it is a reshape + einsum, which XLA:CPU runs much faster than a strided convolution."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        fan_in = in_channels * 4
        self.kernel = nnx.Param(_uniform(rngs.params(), (2, 2, in_channels, out_channels), fan_in))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_channels,), fan_in))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        patches = x.reshape(b, h // 2, 2, w // 2, 2, c)
        return jnp.einsum("bhpwqc,pqco->bhwo", patches, self.kernel[...]) + self.bias[...]


class Up2x2(nnx.Module):
    """2×2 stride-2 transposed conv (PyTorch ``ConvTranspose2d(in, out, 2, stride=2)``): each
    input pixel writes its own 2×2 output patch, so it is an einsum + reshape. Kernel layout
    (kh, kw, in, out) = PyTorch's (in, out, kh, kw) permuted (2, 3, 0, 1)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        fan_in = out_channels * 4  # PyTorch's ConvTranspose2d convention (see module docstring)
        self.kernel = nnx.Param(_uniform(rngs.params(), (2, 2, in_channels, out_channels), fan_in))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_channels,), fan_in))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,pqco->bhpwqo", x, self.kernel[...])
        return y.reshape(b, 2 * h, 2 * w, -1) + self.bias[...]


class Conv1x1(nnx.Module):
    """1×1 conv = per-pixel dense layer; kernel (in, out)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_uniform(rngs.params(), (in_channels, out_channels), in_channels))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_channels,), in_channels))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


class InstanceNorm(nnx.Module):
    """Per-sample, per-channel normalisation over H, W with biased variance and an affine map
    (PyTorch ``InstanceNorm2d(c, affine=True)``, which uses instance statistics in eval too)."""

    def __init__(self, channels: int, *, scale_init: float = 1.0, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.full((channels,), scale_init, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class PtychoBlock(nnx.Module):
    """``y = x + GELU(S(x) + Conv3x3(x))``. Returns (y, update) with update = y − x."""

    def __init__(self, channels: int, modes: int, spectral: str = "upstream", *,
                 rngs: nnx.Rngs):
        self.spectral = SpectralConv2d(channels, channels, modes, spectral, rngs=rngs)
        self.conv = Conv3x3(channels, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        update = gelu(self.spectral(x) + self.conv(x))
        return x + update, update


class StablePtychoBlock(nnx.Module):
    """``u = InstanceNorm(GELU(S(x) + Conv3x3(x)))``, ``y = x + λ ⊙ u`` (LayerScale, λ per channel
    initialised to ``layerscale_init``). ``zero_gamma``: no λ, InstanceNorm scale and bias start
    at 0, so the block is exactly the identity at init. Returns (y, update)."""

    def __init__(self, channels: int, modes: int, spectral: str = "upstream", *,
                 layerscale_init: float = 1e-3, zero_gamma: bool = False, rngs: nnx.Rngs):
        self.spectral = SpectralConv2d(channels, channels, modes, spectral, rngs=rngs)
        self.conv = Conv3x3(channels, channels, rngs=rngs)
        self.norm = InstanceNorm(channels, scale_init=0.0 if zero_gamma else 1.0)
        self.layerscale = (None if zero_gamma else
                           nnx.Param(jnp.full((channels,), layerscale_init, jnp.float32)))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        update = self.norm(gelu(self.spectral(x) + self.conv(x)))
        if self.layerscale is not None:
            update = self.layerscale[...] * update
        return x + update, update
