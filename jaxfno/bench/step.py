"""Training-step benchmarks, measured side by side in one process: the engine's step against
its PyTorch eager twin (``step``), K members in one program against K sequential steps
(``seeds``), the training loop against the bare step (``loop``), a cold process against the
persistent compilation cache (``compile``), and the data build with one full evaluation
(``data``)."""

from __future__ import annotations

import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from jaxfno.bench.data import bench_build
from jaxfno.bench.timing import (STEPS_PER_BLOCK, alternating_blocks, device_name, median_seconds,
                                 step_flops, throughput)
from jaxfno.config import ModelConfig, RunConfig
from jaxfno.data import Dataset
from jaxfno.evaluation import score
from jaxfno.execution import ExecutionConfig
from jaxfno.models import build_model
from jaxfno.training import (abstract_model, build_engine, initial_state, predictor, train_members)


def _torch_step(torch_model, probe: np.ndarray, lr: float, device: str):
    """PyTorch eager twin of the engine's step: forward, MAE physics loss, backward, Adam.
    ``float(loss)`` synchronises, so wall time covers the whole step on a GPU too."""
    import torch

    optimizer = torch.optim.Adam(torch_model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    probe_t = torch.from_numpy(np.array(probe, np.complex64)).to(device)

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


def bench_step(dataset: Dataset, model: ModelConfig = ModelConfig(), batch: int = 16,
               repeats: int = 5, with_torch: bool = True,
               execution: ExecutionConfig = ExecutionConfig()) -> dict:
    cfg = RunConfig(model=model)
    cfg = cfg.replace(train=cfg.train.replace(batch_size=batch))
    x_np = np.ascontiguousarray(dataset.train.diffraction[:batch])
    result = {"arch": cfg.model.arch, "batch": batch, "repeats": repeats, "device": device_name(),
              "model": cfg.model.to_dict(), "execution": execution.record()}

    flax_model = build_model(cfg.model, nnx.Rngs(params=jax.random.key(cfg.train.seed)), execution=execution)
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
    engine, _ = build_engine(cfg, dataset, graphdef, rest, execution)
    result["update"] = engine.update_scope
    whole = jax.device_get(jax.tree.map(lambda a: a[None], engine.init_state(nnx.to_pure_dict(params))))
    state = jax.device_put(engine.step_layout(whole))
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

    steps = {"jax": jax_step}
    if torch_model is not None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        result["torch_device"] = device
        if device == "cuda":  # JAX's default on NVIDIA GPUs runs float32 convs and matmuls in TF32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # PyTorch's fastest convolution algorithms
            result["precision"] = f"tf32 (jax_default_matmul_precision={jax.config.jax_default_matmul_precision})"
        torch_model.to(device)
        step = _torch_step(torch_model, dataset.probe_simulated, cfg.optim.lr, device)
        x_t = torch.from_numpy(x_np).to(device)
        result["torch_first_loss"] = step(x_t)
        steps["torch"] = lambda: step(x_t)
    result["steps_per_block"] = STEPS_PER_BLOCK
    for name, (median, times, round_medians) in alternating_blocks(steps, repeats).items():
        result[f"{name}_step_s"], result[f"{name}_step_all_s"] = median, times
        result[f"{name}_round_median_s"] = round_medians
    result["jax_compile_s"] = result["jax_first_call_s"] - result["jax_step_s"]
    throughput(result, step_flops(engine, state, train_x, idx, mask), result["jax_step_s"])
    if torch_model is not None:
        result["speedup_vs_torch"] = result["torch_step_s"] / result["jax_step_s"]
        # Each round's two blocks ran back to back: the median of their ratios is robust to
        # the machine's speed drifting over the run, which moves both medians.
        result["speedup_paired_median"] = statistics.median(
            t / j for t, j in zip(result["torch_round_median_s"], result["jax_round_median_s"]))
        result["first_loss_rel_diff"] = abs(result["jax_first_loss"] - result["torch_first_loss"]) / abs(
            result["torch_first_loss"])
    return result


def bench_data_and_eval(dataset: Dataset, model: ModelConfig = ModelConfig(), repeats: int = 3,
                        execution: ExecutionConfig = ExecutionConfig()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = {"dataset_build": bench_build(tmp)}
    cfg = RunConfig(model=model)
    params = nnx.state(build_model(cfg.model, nnx.Rngs(params=jax.random.key(0)), execution=execution), nnx.Param)
    stacked = jax.tree.map(lambda a: a[None], params)
    predict = predictor(cfg, dataset, execution)
    test_patches = dataset.test.diffraction.shape[0]

    def evaluate():
        return score(predict(stacked)[0], dataset.test.ground_truth)

    start = time.perf_counter()
    evaluate()
    result["evaluation_first_call_s"] = time.perf_counter() - start
    result["evaluation_s"] = median_seconds(evaluate, repeats)
    result["evaluation_note"] = (f"predict the {test_patches} test patches "
                                 f"(batch {cfg.train.infer_batch_size}), stitch, score")
    result["device"], result["model"] = device_name(), model.to_dict()
    return result


def members_step(dataset: Dataset, model: ModelConfig, members: int, batch: int,
                 execution: ExecutionConfig = ExecutionConfig()):
    """A compiled K-member step on one fixed batch: ``step()`` runs it and waits for it."""
    train_x = jax.numpy.asarray(np.ascontiguousarray(dataset.train.diffraction[:batch]))
    configs = [RunConfig(model=model).replace(train=RunConfig().train.replace(seed=s, batch_size=batch))
               for s in range(members)]
    graphdef, _, rest = abstract_model(model, execution)
    engine, _ = build_engine(configs[0], dataset, graphdef, rest, execution)
    state = jax.device_put(engine.step_layout(initial_state(engine, configs)))
    idx = np.tile(np.arange(batch, dtype=np.int32), (members, 1))
    mask = np.ones((members, batch), np.float32)

    def step():
        nonlocal state
        state, out = engine.train_step(state, train_x, idx, mask)
        jax.block_until_ready(out["loss"])

    step()  # compile
    return engine, step


def bench_seeds(dataset: Dataset, model: ModelConfig, members: int = 8, batch: int = 16,
                repeats: int = 3, execution: ExecutionConfig = ExecutionConfig()) -> dict:
    """Step time of K members in one program vs K sequential single-member steps."""
    result = {"members": members, "batch": batch, "device": device_name(), "model": model.to_dict(),
              "execution": execution.record()}
    for k in sorted({1, members}):
        engine, step = members_step(dataset, model, k, batch, execution)
        result[f"step_s_k{k}"] = median_seconds(step, repeats)
        result["member_axis"], result["update"] = engine.member_axis, engine.update_scope
    result["sequential_s"] = members * result["step_s_k1"]
    result["together_over_one"] = result[f"step_s_k{members}"] / result["step_s_k1"]
    result["speedup_vs_sequential"] = result["sequential_s"] / result[f"step_s_k{members}"]
    return result


def bench_loop_overhead(dataset: Dataset, model: ModelConfig, steps: int = 20, batch: int = 16,
                        repeats: int = 5, execution: ExecutionConfig = ExecutionConfig()) -> dict:
    """Seconds per step inside ``train_members`` (median over epochs 2…repeats+1, after
    compilation) vs the bare jitted step of the same program: ``steps`` steps dispatched back to
    back on one batch, one sync at the end, as the loop does (median of ``repeats``)."""
    cfg = RunConfig(model=model).replace(
        train=RunConfig().train.replace(epochs=1 + repeats, batch_size=batch, train_subset=batch * steps))
    with tempfile.TemporaryDirectory() as tmp:
        program = train_members([cfg], [pathlib.Path(tmp) / "run"], dataset, execution=execution)
    loop_s = statistics.median(program.members[0].history["train_seconds"][1:]) / steps
    engine, state = program.engine, program.state
    train_x = jax.numpy.asarray(dataset.train.diffraction[: batch * steps])
    idx = np.arange(batch, dtype=np.int32)[None]
    mask = np.ones((1, batch), np.float32)

    def bare_steps():
        nonlocal state
        for _ in range(steps):
            state, out = engine.train_step(state, train_x, idx, mask)
        jax.block_until_ready(out["loss"])

    bare_s = median_seconds(bare_steps, repeats) / steps
    return {"loop_step_s": loop_s, "bare_step_s": bare_s, "overhead": loop_s / bare_s - 1,
            "steps": steps, "batch": batch, "device": device_name(), "model": model.to_dict()}


_FIRST_STEP = """
import json, sys, time, pathlib
t0 = time.perf_counter()
from jaxfno.io import enable_compilation_cache
enable_compilation_cache()
from jaxfno import bench
from jaxfno.config import ModelConfig
from jaxfno.data import load_dataset
model = ModelConfig.from_json(sys.argv[2])
r = bench.bench_step(load_dataset(sys.argv[1]), batch=int(sys.argv[3]), repeats=1, with_torch=False, model=model)
print(json.dumps({"first_call_s": r["jax_first_call_s"], "process_s": time.perf_counter() - t0}))
"""


def bench_compile_cache(dataset: Dataset, model: ModelConfig, batch: int = 16) -> dict:
    """First-step time in a cold process vs a second process with the persistent cache filled."""
    import json
    import os
    import subprocess
    import sys

    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAXFNO_CACHE": cache}
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", _FIRST_STEP, str(dataset.path), model.to_json(), str(batch)],
                                  env=env, capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {"cold_first_step_s": runs[0]["first_call_s"], "cached_first_step_s": runs[1]["first_call_s"],
            "speedup": runs[0]["first_call_s"] / runs[1]["first_call_s"], "batch": batch,
            "device": device_name(), "model": model.to_dict()}
