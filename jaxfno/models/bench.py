"""Forward and forward+backward timing of one generator (``jaxfno bench model``) and of each of
its layers (``jaxfno bench layers``)."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.config import ModelConfig
from jaxfno.models.layers import compiler_options


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, each waited for."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_forward_backward(cfg: ModelConfig, batch: int = 16, repeats: int = 3, *,
                               resolution: int = 64, seed: int = 0) -> dict[str, Any]:
    """Median wall time of a jitted forward pass and of forward + gradient of a scalar loss
    (mean squared output) w.r.t. all parameters; compilation is timed separately and excluded."""
    from jaxfno.models import build_model, parameter_counts  # avoid a circular import

    graphdef, params = nnx.split(build_model(cfg, seed, resolution=resolution))
    x = jax.random.uniform(jax.random.key(seed), (batch, resolution, resolution, cfg.in_channels))

    def forward(p, x):
        return nnx.merge(graphdef, p)(x)

    def forward_backward(p, x):
        return jax.value_and_grad(lambda p: jnp.mean(jnp.square(forward(p, x))))(p)

    counts = parameter_counts(cfg, resolution=resolution)
    result: dict[str, Any] = {"arch": cfg.arch, "batch": batch, "resolution": resolution,
                              "repeats": repeats, "device": str(jax.devices()[0]),
                              "torch_numel": counts["torch_numel"]}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        start = time.perf_counter()
        compiled = jax.jit(fn, compiler_options=compiler_options()).lower(params, x).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        jax.block_until_ready(compiled(params, x))  # warm-up: first-run allocations
        result[f"{name}_s"] = median_seconds(lambda: compiled(params, x), repeats)
    return result


@contextlib.contextmanager
def _recording_calls(layer_types: tuple[type, ...], calls: list):
    """Temporarily wrap ``__call__`` of ``layer_types`` to append (type name, module, input shape)."""
    originals = {cls: cls.__call__ for cls in layer_types}

    def recording(cls):
        def call(self, x):
            calls.append((cls.__name__, self, tuple(x.shape)))
            return originals[cls](self, x)
        return call

    try:
        for cls in layer_types:
            cls.__call__ = recording(cls)
        yield
    finally:
        for cls, call in originals.items():
            cls.__call__ = call


def benchmark_layers(cfg: ModelConfig, batch: int = 16, repeats: int = 3, *,
                     resolution: int = 64, seed: int = 0) -> dict[str, Any]:
    """Where a generator's forward+backward time goes: every leaf layer called in one forward
    pass (convolutions, 2×2 up/down, spectral layers, InstanceNorm), timed alone (jitted,
    forward and forward + VJP w.r.t. its parameters and input, compilation excluded). Calls with
    the same layer type, input shape and parameter shapes are timed once and counted. What the
    layers do not account for against the whole model is glue (GELU, residual adds, concatenations)
    and cross-layer fusion."""
    from jaxfno.models import build_model  # avoid a circular import
    from jaxfno.models.layers import (Conv1x1, Conv3x3, Down2x2, InstanceNorm, SpectralConv2d,
                                      Up2x2)

    model = build_model(cfg, seed, resolution=resolution)
    calls: list = []
    x_shape = (batch, resolution, resolution, cfg.in_channels)
    with _recording_calls((Conv1x1, Conv3x3, Down2x2, InstanceNorm, SpectralConv2d, Up2x2), calls):
        jax.eval_shape(lambda x: model(x), jax.ShapeDtypeStruct(x_shape, jnp.float32))

    groups: dict[tuple, dict[str, Any]] = {}
    for name, module, shape in calls:
        graphdef, params = nnx.split(module)
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
            compiled = jax.jit(fn, compiler_options=compiler_options()).lower(*args).compile()
            jax.block_until_ready(compiled(*args))
            timings[f"{label}_s"] = median_seconds(lambda: compiled(*args), repeats)
        groups[key] = {"layer": name, "input_shape": list(shape), "count": 1, **timings}

    layers = list(groups.values())
    by_type: dict[str, float] = {}
    for row in layers:
        by_type[row["layer"]] = by_type.get(row["layer"], 0.0) + row["count"] * row["forward_backward_s"]
    whole = benchmark_forward_backward(cfg, batch=batch, repeats=repeats, resolution=resolution, seed=seed)
    return {"arch": cfg.arch, "batch": batch, "device": str(jax.devices()[0]), "layers": layers,
            "forward_backward_s_by_type": by_type,
            "layers_forward_backward_s": sum(by_type.values()),
            "model_forward_backward_s": whole["forward_backward_s"]}


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
