"""Generators (SPEC §3) and the model-level API: construction, parameter accounting, summaries
and per-block diagnostics.

Models are Flax NNX modules holding only ``nnx.Param`` state, so ``nnx.split(model)`` gives
(graphdef, params) and ``nnx.merge(graphdef, params)`` can be called inside ``jax.jit`` /
``jax.vmap`` (see :func:`build_stacked` for one model per seed along a leading axis).
PyTorch lives only in :mod:`jaxfno.models.torch_twin`, which nothing here imports.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.config import ModelConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.models.generators import FNOGenerator, HybridGenerator, check_depth, level_channels
from jaxfno.models.layers import (Conv1x1, Conv3x3, Down2x2, InstanceNorm, PtychoBlock,
                                  SpectralConv2d, StablePtychoBlock, Up2x2)

__all__ = [
    "Conv1x1", "Conv3x3", "Down2x2", "FNOGenerator", "HybridGenerator", "InstanceNorm",
    "PtychoBlock", "SpectralConv2d", "StablePtychoBlock", "Up2x2",
    "block_parameter_stats", "build_model", "build_stacked", "check_depth", "level_channels",
    "parameter_counts", "reachable_shapes", "summary_table",
]

Path = tuple[str | int, ...]


def build_model(cfg: ModelConfig, rngs: nnx.Rngs | int | jax.Array, *, resolution: int = 64,
                execution: ExecutionConfig = ExecutionConfig()) -> nnx.Module:
    """The generator named by ``cfg.arch``, its layers computed as ``execution`` says (the
    parameters do not depend on it). ``rngs`` may be an ``nnx.Rngs``, an int seed or a PRNG key
    (a traced key works, e.g. under ``jax.vmap``)."""
    if not isinstance(rngs, nnx.Rngs):
        rngs = nnx.Rngs(rngs)
    execution = execution.resolved()
    if cfg.arch == "fno":
        return FNOGenerator(cfg, rngs=rngs, resolution=resolution, execution=execution)
    return HybridGenerator(cfg, stable=cfg.arch == "stable_hybrid", rngs=rngs,
                           resolution=resolution, execution=execution)


def build_stacked(cfg: ModelConfig, keys: jax.Array, *,
                  resolution: int = 64) -> tuple[nnx.GraphDef, nnx.State]:
    """K independently initialised models as (graphdef, params with a leading axis of size K),
    one per PRNG key. ``jax.vmap(lambda p, x: nnx.merge(graphdef, p)(x))`` runs them all."""
    graphdef = nnx.graphdef(_abstract(cfg, resolution))
    params = jax.vmap(lambda key: nnx.state(build_model(cfg, key, resolution=resolution)))(keys)
    return graphdef, params


def _abstract(cfg: ModelConfig, resolution: int) -> nnx.Module:
    """The model with ShapeDtypeStruct leaves: no parameter memory is allocated."""
    return nnx.eval_shape(lambda: build_model(cfg, 0, resolution=resolution))


def _flat(tree: Any) -> list[tuple[Path, Any]]:
    """(path, leaf) of a Module's params, an nnx.State or a pure dict of the same shape."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return [(_path(key_path), leaf) for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _path(key_path) -> Path:
    path = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", None))) for k in key_path)
    return path[:-1] if path[-1] == "value" else path


def parameter_counts(cfg: ModelConfig, *, resolution: int = 64) -> dict[str, int]:
    """``torch_numel``: one complex spectral weight counts once (PyTorch's numel);
    ``real_scalars``: every trainable real float; ``effective``: ``torch_numel`` less the
    spectral weight entries no input can reach because the allocated mode block is larger than
    that level's feature map (SPEC §3.3: about 7.8 M at the defaults)."""
    model = _abstract(cfg, resolution)
    flat = _flat(model)
    real = sum(leaf.size for _, leaf in flat)
    imag = sum(leaf.size for path, leaf in flat if path[-1] == "weight_im")
    unused = sum(block.spectral.weight_re.size - block.spectral.used_weight_entries(res, res)
                 for _, block, res in model.blocks())
    return {"torch_numel": real - imag, "real_scalars": real, "effective": real - imag - unused}


def reachable_shapes(cfg: ModelConfig, *, resolution: int = 64) -> dict:
    """The parameters' pure-dict tree with, per array, the shape of its leading block that can
    receive a gradient: the full shape, except for spectral weights whose mode block is larger
    than their level's feature map (see :meth:`SpectralConv2d.reachable_box`)."""
    model = _abstract(cfg, resolution)
    boxes = {name: block.spectral.reachable_box(res, res) for name, block, res in model.blocks()}

    def shape(key_path, leaf) -> tuple[int, ...]:
        path = _path(key_path)
        if path[-1] in ("weight_re", "weight_im"):
            return boxes[_block_name(path)] + leaf.shape[2:]
        return tuple(leaf.shape)

    return jax.tree_util.tree_map_with_path(shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def summary_table(cfg: ModelConfig, *,
                  resolution: int = 64) -> list[tuple[str, tuple[int, ...], int]]:
    """One row (dotted parameter path, shape, element count) per parameter array."""
    return [(".".join(map(str, path)), tuple(leaf.shape), leaf.size)
            for path, leaf in _flat(_abstract(cfg, resolution))]


def _block_name(path: Path) -> str | None:
    if path[0] == "enc":
        return f"enc{path[1]}"
    return "bottleneck" if path[0] == "bottleneck" else None


def block_parameter_stats(params: Any) -> dict[str, dict[str, jax.Array | None]]:
    """Per residual block: mean |λ| (``layerscale_abs_mean``) and the mean InstanceNorm scale
    (``norm_scale_mean``), ``None`` where the block has no such parameter. Accepts a model, its
    params ``nnx.State`` or the pure-dict form; jit-traceable (values are jnp scalars)."""
    stats: dict[str, dict[str, jax.Array | None]] = {}
    for path, leaf in _flat(params):
        name = _block_name(path)
        if name is None:
            continue
        entry = stats.setdefault(name, {"layerscale_abs_mean": None, "norm_scale_mean": None})
        if path[-1] == "layerscale":
            entry["layerscale_abs_mean"] = jnp.mean(jnp.abs(leaf))
        elif path[-2:] == ("norm", "scale"):
            entry["norm_scale_mean"] = jnp.mean(leaf)
    return stats
