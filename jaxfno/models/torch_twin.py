"""The generators re-written in PyTorch (NCHW), for parity tests and the JAX-vs-eager benchmark.

Importing this module imports torch, a test-only dependency: nothing else in ``jaxfno`` imports
it at module level (callers import it inside the function that needs it).

Module and parameter names mirror the Flax models (``lifter.conv1``, ``enc.0.spectral``, …) so
that :func:`copy_torch_to_flax` is a walk over ``named_modules``. Layers use PyTorch's own
classes and default initialisation; spectral weights are complex ``torch.cfloat`` Parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from jaxfno.config import ModelConfig
from jaxfno.models.generators import check_depth, level_channels


class SpectralConv2d(nn.Module):
    """Same modes and weight layout as :class:`jaxfno.models.layers.SpectralConv2d`."""

    def __init__(self, in_channels: int, out_channels: int, modes: int, variant: str):
        super().__init__()
        self.out_channels, self.modes, self.variant = out_channels, modes, variant
        half = modes // 2
        shape = (modes, modes) if variant == "upstream" else (2 * half, half + 1)
        # cfloat randn has variance 1/2 per part: each part ends up N(0, 1/(2·in)).
        self.weight = nn.Parameter(
            torch.randn(in_channels, out_channels, *shape, dtype=torch.cfloat)
            / math.sqrt(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x_ft = torch.fft.rfft2(x)
        out = torch.zeros(b, self.out_channels, h, w // 2 + 1, dtype=torch.cfloat,
                          device=x.device)
        wt = self.weight
        if self.variant == "upstream":
            rows, cols = min(self.modes, h), min(self.modes, w // 2 + 1)
            out[:, :, :rows, :cols] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :rows, :cols],
                                                   wt[:, :, :rows, :cols])
        else:
            half = self.modes // 2
            rows, cols = min(half, h // 2), min(half + 1, w // 2 + 1)
            out[:, :, :rows, :cols] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :rows, :cols],
                                                   wt[:, :, :rows, :cols])
            out[:, :, h - rows:, :cols] = torch.einsum(
                "bixy,ioxy->boxy", x_ft[:, :, h - rows:, :cols], wt[:, :, 2 * half - rows:, :cols])
        return torch.fft.irfft2(out, s=(h, w))


class PtychoBlock(nn.Module):
    def __init__(self, channels: int, modes: int, spectral: str):
        super().__init__()
        self.spectral = SpectralConv2d(channels, channels, modes, spectral)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.spectral(x) + self.conv(x))


class StablePtychoBlock(nn.Module):
    def __init__(self, channels: int, modes: int, spectral: str, layerscale_init: float,
                 zero_gamma: bool):
        super().__init__()
        self.spectral = SpectralConv2d(channels, channels, modes, spectral)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.InstanceNorm2d(channels, affine=True, eps=1e-5)
        if zero_gamma:
            nn.init.zeros_(self.norm.weight)
            self.layerscale = None
        else:
            self.layerscale = nn.Parameter(torch.full((channels,), layerscale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.norm(F.gelu(self.spectral(x) + self.conv(x)))
        if self.layerscale is not None:
            update = self.layerscale.view(1, -1, 1, 1) * update
        return x + update


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x)))


def _block(cfg: ModelConfig, channels: int, modes: int, stable: bool) -> nn.Module:
    if stable:
        return StablePtychoBlock(channels, modes, cfg.spectral, cfg.layerscale_init,
                                 cfg.zero_gamma)
    return PtychoBlock(channels, modes, cfg.spectral)


class HybridGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig, stable: bool, resolution: int = 64):
        super().__init__()
        check_depth(cfg.blocks, resolution)
        n = cfg.blocks
        ch = [level_channels(cfg, level) for level in range(n)]
        self.lifter = DoubleConv(cfg.in_channels, cfg.width)
        self.enc = nn.ModuleList([_block(cfg, ch[l], cfg.modes, stable) for l in range(n)])
        self.down = nn.ModuleList([nn.Conv2d(ch[l], ch[l + 1], 2, stride=2)
                                   for l in range(n - 1)])
        self.bottleneck = _block(cfg, ch[-1], cfg.modes // 2, stable)
        levels = range(n - 2, -1, -1)
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[l + 1], ch[l], 2, stride=2)
                                 for l in levels])
        self.dec = nn.ModuleList([DoubleConv(2 * ch[l], ch[l]) for l in levels])
        self.head = nn.Conv2d(ch[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lifter(x)
        skips = []
        for level, block in enumerate(self.enc):
            h = block(h)
            if level < len(self.down):
                skips.append(h)
                h = self.down[level](h)
        h = self.bottleneck(h)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = dec(torch.cat([up(h), skip], dim=1))
        return self.head(h)


class FNOGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.lifter = DoubleConv(cfg.in_channels, cfg.width)
        self.enc = nn.ModuleList([PtychoBlock(cfg.width, cfg.modes, cfg.spectral)
                                  for _ in range(cfg.blocks)])
        self.head = nn.Conv2d(cfg.width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lifter(x)
        for block in self.enc:
            h = block(h)
        return self.head(h)


def build_torch_model(cfg: ModelConfig, *, resolution: int = 64) -> nn.Module:
    """The PyTorch twin of ``jaxfno.models.build_model(cfg, ...)``; input/output NCHW."""
    if cfg.arch == "fno":
        return FNOGenerator(cfg)
    return HybridGenerator(cfg, stable=cfg.arch == "stable_hybrid", resolution=resolution)


def _array(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().cpu().numpy())


def _assign(param: nnx.Param, value: jnp.ndarray, name: str) -> None:
    if param[...].shape != value.shape:
        raise ValueError(f"{name}: torch shape {value.shape} != flax shape {param[...].shape}")
    param[...] = value


def copy_torch_to_flax(torch_model: nn.Module, flax_model: nnx.Module) -> nnx.Module:
    """Overwrite every parameter of ``flax_model`` (in place) with the twin's; returns it.

    Conv2d OIHW → HWIO (1×1 head → (in, out)); ConvTranspose2d (in, out, kh, kw) →
    (kh, kw, in, out); complex spectral weight (in, out, m, m) → (re, im), each (m, m, in, out);
    InstanceNorm weight → scale."""
    copied = 0
    for name, module in torch_model.named_modules():
        target = flax_model
        for part in filter(None, name.split(".")):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        if isinstance(module, nn.ConvTranspose2d):
            kernel = _array(module.weight.permute(2, 3, 0, 1))
        elif isinstance(module, nn.Conv2d):
            kernel = _array(module.weight.permute(2, 3, 1, 0)).reshape(target.kernel.shape)
        elif isinstance(module, SpectralConv2d):
            weight = module.weight.permute(2, 3, 0, 1)  # (in, out, m, m) → (m, m, in, out)
            _assign(target.weight_re, _array(weight.real), f"{name}.weight_re")
            _assign(target.weight_im, _array(weight.imag), f"{name}.weight_im")
            copied += 2
            continue
        elif isinstance(module, nn.InstanceNorm2d):
            _assign(target.scale, _array(module.weight), f"{name}.scale")
            _assign(target.bias, _array(module.bias), f"{name}.bias")
            copied += 2
            continue
        else:
            if getattr(module, "layerscale", None) is not None:
                _assign(target.layerscale, _array(module.layerscale), f"{name}.layerscale")
                copied += 1
            continue
        _assign(target.kernel, kernel, f"{name}.kernel")
        _assign(target.bias, _array(module.bias), f"{name}.bias")
        copied += 2
    expected = len(jax.tree.leaves(nnx.state(flax_model, nnx.Param)))
    if copied != expected:
        raise ValueError(f"copied {copied} parameter arrays but the flax model has {expected}")
    return flax_model
