"""Timing helpers shared by the benchmarks: medians, alternating blocks, the device's name,
FLOP counts and throughput, a plain table."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import jax

# Nominal dense float32 (non-tensor-core) peaks, FLOP/s; used only to report a fraction.
NOMINAL_FP32_PEAK = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, each waited for."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


STEPS_PER_BLOCK = 6


def alternating_blocks(fns: dict[str, Callable[[], object]], rounds: int,
                        block: int = STEPS_PER_BLOCK) -> dict[str, tuple[float, list[float], list[float]]]:
    """(median seconds, all seconds, per-round medians) of each function. Every round runs each
    function in turn for one untimed call and then ``block`` timed calls back to back, so each
    is measured in the steady state of consecutive training steps, and a load change on the
    machine over the run affects all of them alike. Measured on the 2-core CPU: single steps
    taken in turn with PyTorch's (each after a 0.5 s pause) took JAX 0.44–0.47 s against
    0.30 s back to back, and the pauses took PyTorch from 0.37 to 0.50 s; after a switch the
    first one or two JAX steps are slower still (0.31–0.34 s against 0.24 s)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    round_medians: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            block_times = []
            for _ in range(block):
                start = time.perf_counter()
                fn()
                block_times.append(time.perf_counter() - start)
            times[name] += block_times
            round_medians[name].append(statistics.median(block_times))
    return {name: (statistics.median(times[name]), times[name], round_medians[name]) for name in fns}


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} ({platform.processor() or platform.machine()})"


def step_flops(engine, state, *args) -> float | None:
    analysis = engine.train_step.lower(state, *args).compile().cost_analysis()
    if isinstance(analysis, list):  # older jax returns one dict per computation
        analysis = analysis[0]
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def throughput(result: dict, flops: float | None, seconds: float) -> None:
    result["step_flops"] = flops
    if flops:
        result["achieved_flops_per_s"] = flops / seconds
        kind = getattr(jax.devices()[0], "device_kind", "")
        peak = next((v for k, v in NOMINAL_FP32_PEAK.items() if k in kind), None)
        result["fraction_of_fp32_peak"] = flops / seconds / peak if peak else None


def format_table(result: dict) -> str:
    width = max(len(k) for k in result)
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)
