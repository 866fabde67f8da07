"""Forward and forward+backward timing of one generator (``jaxfno bench model``)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.config import ModelConfig


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
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
        compiled = jax.jit(fn).lower(params, x).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        jax.block_until_ready(compiled(params, x))  # warm-up: first-run allocations
        result[f"{name}_s"] = _median_seconds(lambda: compiled(params, x), repeats)
    return result
