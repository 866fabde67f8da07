"""Forward and forward+backward timing of one generator (``jaxfno bench model``) and of each of
its layers (``jaxfno bench layers``)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.bench.timing import median_seconds
from jaxfno.config import ModelConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.models import build_model, parameter_counts
from jaxfno.models.layers import Conv1x1, Conv3x3, Down2x2, InstanceNorm, SpectralConv2d, Up2x2

LEAF_LAYERS = (Conv1x1, Conv3x3, Down2x2, InstanceNorm, SpectralConv2d, Up2x2)


def bench_model(cfg: ModelConfig, batch: int = 16, repeats: int = 3, *, resolution: int = 64,
                seed: int = 0, execution: ExecutionConfig = ExecutionConfig()) -> dict[str, Any]:
    """Median wall time of a jitted forward pass and of forward + gradient of a scalar loss
    (mean squared output) w.r.t. all parameters; compilation is timed separately and excluded."""
    graphdef, params = nnx.split(build_model(cfg, seed, resolution=resolution, execution=execution))
    x = jax.random.uniform(jax.random.key(seed), (batch, resolution, resolution, cfg.in_channels))

    def forward(p, x):
        return nnx.merge(graphdef, p)(x)

    def forward_backward(p, x):
        return jax.value_and_grad(lambda p: jnp.mean(jnp.square(forward(p, x))))(p)

    counts = parameter_counts(cfg, resolution=resolution)
    result: dict[str, Any] = {"arch": cfg.arch, "batch": batch, "resolution": resolution,
                              "repeats": repeats, "device": str(jax.devices()[0]),
                              "torch_numel": counts["torch_numel"], "execution": execution.record()}
    options = execution.compiler_options()
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        start = time.perf_counter()
        compiled = jax.jit(fn, compiler_options=options).lower(params, x).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        jax.block_until_ready(compiled(params, x))  # warm-up: first-run allocations
        result[f"{name}_s"] = median_seconds(lambda: compiled(params, x), repeats)
    return result


def _input_shape(layer: nnx.Module, out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A leaf layer's input shape from its output's (every one maps (B, H, W, C) maps)."""
    b, h, w, _ = out_shape
    if isinstance(layer, Down2x2):
        return b, 2 * h, 2 * w, layer.kernel.shape[2]
    if isinstance(layer, Up2x2):
        return b, h // 2, w // 2, layer.kernel.shape[2]
    if isinstance(layer, InstanceNorm):
        return tuple(out_shape)
    if isinstance(layer, SpectralConv2d):
        return b, h, w, layer.in_channels
    return b, h, w, layer.kernel.shape[-2]  # Conv1x1 (in, out), Conv3x3 (3, 3, in, out)


def layer_calls(model: nnx.Module, x_shape: tuple[int, ...]) -> list[tuple[nnx.Module, tuple[int, ...]]]:
    """(leaf layer, its input shape) for every leaf layer of ``model`` (each is called once per
    forward pass), from the output shapes ``nnx.capture`` records in an abstract forward pass."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate, method_outputs=nnx.Intermediate)(x)[1]

    outputs = nnx.to_pure_dict(jax.eval_shape(forward, state, jax.ShapeDtypeStruct(x_shape, jnp.float32)))
    calls = []
    for path, layer in nnx.iter_graph(model):
        if isinstance(layer, LEAF_LAYERS):
            node = outputs
            for key in path:
                node = node[key]
            calls.append((layer, _input_shape(layer, node["__call__"][0].shape)))
    return calls


def bench_layers(cfg: ModelConfig, batch: int = 16, repeats: int = 3, *, resolution: int = 64,
                 seed: int = 0, execution: ExecutionConfig = ExecutionConfig()) -> dict[str, Any]:
    """Where a generator's forward+backward time goes: every leaf layer (convolutions, 2×2
    up/down, spectral layers, InstanceNorm) timed alone (jitted, forward and forward + VJP w.r.t.
    its parameters and input, compilation excluded). Layers of the same type, input shape and
    parameter shapes are timed once and counted. What the layers do not account for against the
    whole model is glue (GELU, residual adds, concatenations) and cross-layer fusion."""
    model = build_model(cfg, seed, resolution=resolution, execution=execution)
    options = execution.compiler_options()
    groups: dict[tuple, dict[str, Any]] = {}
    for layer, shape in layer_calls(model, (batch, resolution, resolution, cfg.in_channels)):
        name = type(layer).__name__
        graphdef, params = nnx.split(layer)
        key = (name, shape, tuple(p.shape for p in jax.tree.leaves(params)))
        if key in groups:
            groups[key]["count"] += 1
            continue

        def forward(p, x, graphdef=graphdef):
            return nnx.merge(graphdef, p)(x)

        def forward_backward(p, x, cotangent, forward=forward):
            return jax.vjp(forward, p, x)[1](cotangent)

        keys = jax.random.split(jax.random.key(seed), 2)
        x = jax.random.normal(keys[0], shape)
        cotangent = jax.random.normal(keys[1], jax.eval_shape(forward, params, x).shape)
        timings = {}
        for label, fn, args in (("forward", forward, (params, x)),
                                ("forward_backward", forward_backward, (params, x, cotangent))):
            compiled = jax.jit(fn, compiler_options=options).lower(*args).compile()
            jax.block_until_ready(compiled(*args))
            timings[f"{label}_s"] = median_seconds(lambda: compiled(*args), repeats)
        groups[key] = {"layer": name, "input_shape": list(shape), "count": 1, **timings}

    layers = list(groups.values())
    by_type: dict[str, float] = {}
    for row in layers:
        by_type[row["layer"]] = by_type.get(row["layer"], 0.0) + row["count"] * row["forward_backward_s"]
    whole = bench_model(cfg, batch=batch, repeats=repeats, resolution=resolution, seed=seed, execution=execution)
    return {"arch": cfg.arch, "batch": batch, "device": str(jax.devices()[0]), "layers": layers,
            "forward_backward_s_by_type": by_type,
            "layers_forward_backward_s": sum(by_type.values()),
            "model_forward_backward_s": whole["forward_backward_s"], "execution": execution.record()}


def format_layers(result: dict[str, Any]) -> str:
    """The per-layer table of :func:`benchmark_layers`, milliseconds."""
    lines = [f"{'layer':<15} {'input shape':<20} {'n':>3} {'fwd ms':>9} {'fwd+bwd ms':>11} {'total ms':>9}"]
    for row in result["layers"]:
        lines.append(f"{row['layer']:<15} {str(tuple(row['input_shape'])):<20} {row['count']:>3} "
                     f"{1e3 * row['forward_s']:>9.2f} {1e3 * row['forward_backward_s']:>11.2f} "
                     f"{1e3 * row['count'] * row['forward_backward_s']:>9.2f}")
    lines.append("")
    for name, seconds in sorted(result["forward_backward_s_by_type"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<15} fwd+bwd {1e3 * seconds:9.1f} ms")
    lines.append(f"{'all layers':<15} fwd+bwd {1e3 * result['layers_forward_backward_s']:9.1f} ms; "
                 f"whole model {1e3 * result['model_forward_backward_s']:.1f} ms ({result['device']})")
    return "\n".join(lines)
