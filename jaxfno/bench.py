"""Benchmarks behind ``jaxfno bench``: measured side by side in one process, printed as a table
and returned as JSON-ready dicts. Never used as timed unit tests.

* ``step``: one training step of the real engine (vmapped over one member, jit-compiled; compile
  timed separately) against a PyTorch eager twin of the same step (same weights, same batch,
  same physics loss, Adam), with the ratio and both first-step losses (same numerics).
* ``data``: building the 1+1-image dataset and one full evaluation (predict 1089 patches at
  the inference batch, stitch, score).
* ``model``: generator forward and forward+backward.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from typing import Callable

import jax
import numpy as np
from flax import nnx

from jaxfno.config import ModelConfig, RunConfig
from jaxfno.data import Dataset, benchmark_build
from jaxfno.evaluation import score
from jaxfno.models import benchmark_forward_backward, build_model
from jaxfno.training.loop import build_engine, sequential_batches


def _median(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} ({platform.processor() or platform.machine()})"


def _torch_step(torch_model, probe: np.ndarray, lr: float):
    """PyTorch eager twin of the engine's step: forward, MAE physics loss, backward, Adam."""
    import torch

    optimizer = torch.optim.Adam(torch_model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    probe_t = torch.from_numpy(np.asarray(probe, np.complex64))

    def step(x: "torch.Tensor") -> float:
        optimizer.zero_grad(set_to_none=True)
        out = torch_model(x[:, None])
        obj = torch.complex(out[:, 0], out[:, 1])
        amp = torch.fft.fftshift(torch.fft.fft2(obj * probe_t, norm="ortho"), dim=(-2, -1)).abs()
        loss = (amp - x).abs().mean() / (x.mean().detach() + 1e-8)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def bench_step(dataset: Dataset, arch: str = "hybrid", batch: int = 16, repeats: int = 5,
               with_torch: bool = True, model: ModelConfig | None = None) -> dict:
    cfg = RunConfig(model=model or ModelConfig(arch=arch))
    cfg = cfg.replace(train=cfg.train.replace(batch_size=batch))
    x_np = np.ascontiguousarray(dataset.train.diffraction[:batch])
    result = {"arch": cfg.model.arch, "batch": batch, "repeats": repeats, "device": device_name(),
              "model": cfg.model.to_dict()}

    flax_model = build_model(cfg.model, nnx.Rngs(params=jax.random.key(cfg.train.seed)))
    torch_model = None
    if with_torch:
        try:
            import torch

            from jaxfno.models.torch_twin import build_torch_model, copy_torch_to_flax

            torch.manual_seed(cfg.train.seed)
            torch_model = build_torch_model(cfg.model)
            copy_torch_to_flax(torch_model, flax_model)  # identical starting weights
            result["torch_threads"] = torch.get_num_threads()
        except ImportError:
            result["torch"] = "not installed"

    graphdef, params, rest = nnx.split(flax_model, nnx.Param, ...)
    engine, _ = build_engine(cfg, dataset, graphdef, rest)
    state = jax.tree.map(lambda a: a[None], engine.init_state(params))
    train_x = jax.numpy.asarray(x_np)
    idx = np.arange(batch, dtype=np.int32)[None]
    mask = np.ones((1, batch), np.float32)

    start = time.perf_counter()
    state, logs = engine.train_step(state, train_x, idx, mask)
    jax.block_until_ready(logs)
    result["jax_first_call_s"] = time.perf_counter() - start  # compile + one step
    result["jax_first_loss"] = float(logs["loss"][0])

    def jax_step():
        nonlocal state
        state, out = engine.train_step(state, train_x, idx, mask)
        jax.block_until_ready(out["loss"])

    result["jax_step_s"], result["jax_step_all_s"] = _median(jax_step, repeats)
    result["jax_compile_s"] = result["jax_first_call_s"] - result["jax_step_s"]

    if torch_model is not None:
        import torch

        step = _torch_step(torch_model, dataset.probe_simulated, cfg.optim.lr)
        x_t = torch.from_numpy(x_np)
        result["torch_first_loss"] = step(x_t)
        result["torch_step_s"], result["torch_step_all_s"] = _median(lambda: step(x_t), repeats)
        result["speedup_vs_torch"] = result["torch_step_s"] / result["jax_step_s"]
        result["first_loss_rel_diff"] = abs(result["jax_first_loss"] - result["torch_first_loss"]) / abs(
            result["torch_first_loss"])
    return result


def bench_data_and_eval(dataset: Dataset, repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = {"dataset_build": benchmark_build(tmp)}
    cfg = RunConfig()
    graphdef, params, rest = nnx.split(build_model(cfg.model, nnx.Rngs(params=jax.random.key(0))), nnx.Param, ...)
    engine, test_x = build_engine(cfg, dataset, graphdef, rest)
    stacked = jax.tree.map(lambda a: a[None], params)
    idx, _ = sequential_batches(test_x.shape[0], cfg.train.infer_batch_size)

    def evaluate():
        stitched = np.asarray(engine.predict(stacked, test_x, idx))[0]
        return score(stitched, dataset.test.ground_truth)

    start = time.perf_counter()
    evaluate()
    result["evaluation_first_call_s"] = time.perf_counter() - start
    result["evaluation_s"], _ = _median(evaluate, repeats)
    result["evaluation_note"] = "full-size hybrid: predict 1089 test patches (batch 8), stitch, score"
    result["device"] = device_name()
    return result


def bench_model(arch: str, batch: int = 16, repeats: int = 3) -> dict:
    return benchmark_forward_backward(ModelConfig(arch=arch), batch=batch, repeats=repeats)


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
