"""Layers and residual blocks of the generators (SPEC §3.1–3.2), channels-last (B, H, W, C).

Initialisation follows PyTorch's defaults so that a JAX run starts from the same distribution as
the upstream PyTorch model: every conv weight and bias is uniform in ±1/sqrt(fan_in), with
PyTorch's fan_in conventions (Conv2d: in·kh·kw; ConvTranspose2d: out·kh·kw, because PyTorch
stores its weight as (in, out, kh, kw) and reads fan_in from dim 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.config import ModelConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.models import kernels


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, written as PyTorch's default ``F.gelu`` computes it. ``jax.nn.gelu``
    uses erfc, whose branches are slower on the CPU; the two agree to 1e-6."""
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
    contraction as it is (with the (in, out, m, m) order XLA would transpose the weights and their
    gradients every step; docs/performance.md). Rows 0…mh−1 and
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
                 variant: str = "upstream", *, transform: str = "fft", mixing: str = "complex",
                 rngs: nnx.Rngs):
        if transform not in kernels.SPECTRAL_TRANSFORMS or mixing not in kernels.SPECTRAL_MIXINGS:
            raise ValueError(f"spectral transform {transform!r} / mixing {mixing!r}: not one of "
                             f"{kernels.SPECTRAL_TRANSFORMS} / {kernels.SPECTRAL_MIXINGS}")
        self.transform, self.mixing = transform, mixing
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
        if self.transform == "dft":  # always mixed in reals
            spectrum = kernels.forward_dft(x, freq_rows, cols)
            return kernels.inverse_dft(*kernels.mix_stacked(spectrum, w_re, w_im), freq_rows, height, width)
        x_ft = jnp.fft.rfft2(x, axes=(1, 2))[:, :, :cols]
        y = kernels.mix_modes(jnp.concatenate([x_ft[:, :rows], x_ft[:, height - tail:]], axis=1),
                              w_re, w_im, self.mixing)
        gap = jnp.zeros((y.shape[0], height - rows - tail) + y.shape[2:], y.dtype)
        y = jnp.concatenate([y[:, :rows], gap, y[:, rows:]], axis=1)
        y = jnp.pad(y, ((0, 0), (0, 0), (0, width // 2 + 1 - cols), (0, 0)))
        return jnp.fft.irfft2(y, s=(height, width), axes=(1, 2))


class Conv3x3(nnx.Module):
    """3×3 conv, zero padding 1, bias (PyTorch ``Conv2d(in, out, 3, padding=1)``), computed by
    :func:`jaxfno.models.kernels.conv3x3` as ``impl`` says."""

    def __init__(self, in_channels: int, out_channels: int, *, impl: str = "xla", rngs: nnx.Rngs):
        if impl not in kernels.CONV3X3_IMPLS:
            raise ValueError(f"conv3x3 implementation {impl!r} is not one of {kernels.CONV3X3_IMPLS}")
        fan_in = in_channels * 9
        self.impl = impl
        self.kernel = nnx.Param(_uniform(rngs.params(), (3, 3, in_channels, out_channels), fan_in))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_channels,), fan_in))

    def __call__(self, x: jax.Array) -> jax.Array:
        return kernels.conv3x3(x, self.kernel[...], self.impl) + self.bias[...]


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


def _mixers(channels: int, modes: int, spectral: str, execution: ExecutionConfig,
            rngs: nnx.Rngs) -> tuple[SpectralConv2d, Conv3x3]:
    """A block's Fourier layer and 3×3 conv, with the kernels ``execution`` resolves to."""
    execution = execution.resolved()
    return (SpectralConv2d(channels, channels, modes, spectral, transform=execution.spectral_transform,
                           mixing=execution.spectral_mixing, rngs=rngs),
            Conv3x3(channels, channels, impl=execution.conv3x3, rngs=rngs))


class PtychoBlock(nnx.Module):
    """``y = x + GELU(S(x) + Conv3x3(x))``. Returns (y, update) with update = y − x."""

    def __init__(self, channels: int, modes: int, spectral: str = "upstream", *,
                 execution: ExecutionConfig = ExecutionConfig(), rngs: nnx.Rngs):
        self.spectral, self.conv = _mixers(channels, modes, spectral, execution, rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        update = gelu(self.spectral(x) + self.conv(x))
        return x + update, update


class StablePtychoBlock(nnx.Module):
    """``u = InstanceNorm(GELU(S(x) + Conv3x3(x)))``, ``y = x + λ ⊙ u`` (LayerScale, λ per channel
    initialised to ``layerscale_init``). ``zero_gamma``: no λ, InstanceNorm scale and bias start
    at 0, so the block is exactly the identity at init. Returns (y, update)."""

    def __init__(self, channels: int, modes: int, spectral: str = "upstream", *,
                 layerscale_init: float = 1e-3, zero_gamma: bool = False,
                 execution: ExecutionConfig = ExecutionConfig(), rngs: nnx.Rngs):
        self.spectral, self.conv = _mixers(channels, modes, spectral, execution, rngs)
        self.norm = InstanceNorm(channels, scale_init=0.0 if zero_gamma else 1.0)
        self.layerscale = (None if zero_gamma else
                           nnx.Param(jnp.full((channels,), layerscale_init, jnp.float32)))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        update = self.norm(gelu(self.spectral(x) + self.conv(x)))
        if self.layerscale is not None:
            update = self.layerscale[...] * update
        return x + update, update
