"""The generators of SPEC §3.3: the hybrid U-shaped FNO (arms ``hybrid`` / ``stable_hybrid``)
and upstream's cascaded ``fno`` generator.

Input (B, H, W, in_channels) float32 (the diffraction amplitude), output (B, H, W, 2):
channel 0 = real part, 1 = imaginary part of the object patch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.config import ModelConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.models.layers import (Conv1x1, Conv3x3, Down2x2, PtychoBlock, StablePtychoBlock,
                                  Up2x2, gelu)

BlockStats = dict[str, dict[str, jax.Array]]


def _rms(a: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(a)))


def level_channels(cfg: ModelConfig, level: int) -> int:
    """Channels at encoder level ℓ: width·2^ℓ, capped by ``max_hidden_channels``."""
    channels = cfg.width * 2 ** level
    return channels if cfg.max_hidden_channels is None else min(channels, cfg.max_hidden_channels)


def check_depth(blocks: int, resolution: int) -> None:
    """Every stride-2 downsample (blocks−1 of them) needs a map of at least 2×2, so the coarsest
    level is at least 1×1 (SPEC §3.3: at N = 64, 7 blocks reach 1×1 and 8 are impossible)."""
    coarsest = resolution / 2 ** (blocks - 1)
    if coarsest < 1:
        deepest = next(n for n in range(blocks, 0, -1) if resolution / 2 ** (n - 1) >= 1)
        raise ValueError(
            f"blocks={blocks} is impossible at resolution {resolution}×{resolution}: its "
            f"{blocks - 1} stride-2 downsamples would shrink the map below 1×1 "
            f"({resolution}/2^{blocks - 1}); at most {deepest} blocks fit")


class DoubleConv(nnx.Module):
    """Conv3x3 → GELU → Conv3x3: the lifter and each decoder stage."""

    def __init__(self, in_channels: int, out_channels: int, *, execution: ExecutionConfig,
                 rngs: nnx.Rngs):
        impl = execution.resolved().conv3x3
        self.conv1 = Conv3x3(in_channels, out_channels, impl=impl, rngs=rngs)
        self.conv2 = Conv3x3(out_channels, out_channels, impl=impl, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv2(gelu(self.conv1(x)))


def _block(cfg: ModelConfig, channels: int, modes: int, stable: bool, execution: ExecutionConfig,
           rngs: nnx.Rngs):
    if stable:
        return StablePtychoBlock(channels, modes, cfg.spectral, layerscale_init=cfg.layerscale_init,
                                 zero_gamma=cfg.zero_gamma, execution=execution, rngs=rngs)
    return PtychoBlock(channels, modes, cfg.spectral, execution=execution, rngs=rngs)


class HybridGenerator(nnx.Module):
    """Lifter; encoder levels ℓ = 0…n−1 (one block each, skip kept for ℓ < n−1, then a 2×2
    stride-2 conv to the next level's channels); bottleneck block with modes//2 at the coarsest
    level; n−1 decoder stages (transposed conv, concat [up, skip], Conv3x3 → GELU → Conv3x3);
    Conv1x1 head. ``stable=True`` (arm ``stable_hybrid``) uses StablePtychoBlock for every
    encoder block and the bottleneck."""

    def __init__(self, cfg: ModelConfig, *, stable: bool, rngs: nnx.Rngs, resolution: int = 64,
                 execution: ExecutionConfig = ExecutionConfig()):
        check_depth(cfg.blocks, resolution)
        self.resolution = resolution
        n = cfg.blocks
        ch = [level_channels(cfg, level) for level in range(n)]
        self.lifter = DoubleConv(cfg.in_channels, cfg.width, execution=execution, rngs=rngs)
        self.enc = nnx.List([_block(cfg, ch[l], cfg.modes, stable, execution, rngs) for l in range(n)])
        self.down = nnx.List([Down2x2(ch[l], ch[l + 1], rngs=rngs) for l in range(n - 1)])
        self.bottleneck = _block(cfg, ch[-1], cfg.modes // 2, stable, execution, rngs)
        levels = range(n - 2, -1, -1)  # decoder order: coarsest skip first
        self.up = nnx.List([Up2x2(ch[l + 1], ch[l], rngs=rngs) for l in levels])
        self.dec = nnx.List([DoubleConv(2 * ch[l], ch[l], execution=execution, rngs=rngs) for l in levels])
        self.head = Conv1x1(ch[0], 2, rngs=rngs)

    def blocks(self) -> list[tuple[str, nnx.Module, int]]:
        """(name, block, resolution of its feature map) for every residual block."""
        n = len(self.enc)
        named = [(f"enc{l}", b, self.resolution // 2 ** l) for l, b in enumerate(self.enc)]
        return named + [("bottleneck", self.bottleneck, self.resolution // 2 ** (n - 1))]

    def __call__(self, x: jax.Array, *, with_block_stats: bool = False):
        stats: BlockStats = {}
        h = self.lifter(x)
        skips = []
        for level, block in enumerate(self.enc):
            h, update = block(h)
            stats[f"enc{level}"] = {"update_rms": _rms(update), "output_rms": _rms(h)}
            if level < len(self.down):
                skips.append(h)
                h = self.down[level](h)
        h, update = self.bottleneck(h)
        stats["bottleneck"] = {"update_rms": _rms(update), "output_rms": _rms(h)}
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = dec(jnp.concatenate([up(h), skip], axis=-1))
        out = self.head(h)
        return (out, stats) if with_block_stats else out


class FNOGenerator(nnx.Module):
    """Upstream's cascaded ``fno`` generator, approximated as lifter → ``blocks`` PtychoBlocks at
    full resolution with ``modes`` → Conv1x1 head (no U-shape). Only the hybrid arms are
    specified exactly; this one is a cheap control, not a parity target."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, resolution: int = 64,
                 execution: ExecutionConfig = ExecutionConfig()):
        self.resolution = resolution
        self.lifter = DoubleConv(cfg.in_channels, cfg.width, execution=execution, rngs=rngs)
        self.enc = nnx.List([_block(cfg, cfg.width, cfg.modes, False, execution, rngs)
                             for _ in range(cfg.blocks)])
        self.head = Conv1x1(cfg.width, 2, rngs=rngs)

    def blocks(self) -> list[tuple[str, nnx.Module, int]]:
        return [(f"enc{l}", b, self.resolution) for l, b in enumerate(self.enc)]

    def __call__(self, x: jax.Array, *, with_block_stats: bool = False):
        stats: BlockStats = {}
        h = self.lifter(x)
        for level, block in enumerate(self.enc):
            h, update = block(h)
            stats[f"enc{level}"] = {"update_rms": _rms(update), "output_rms": _rms(h)}
        out = self.head(h)
        return (out, stats) if with_block_stats else out
