"""Benchmarks behind ``jaxfno bench``: measured side by side in one process, printed as a table
and returned as JSON-ready dicts. Never used as timed unit tests.

* ``step``: one training step of the real engine (vmapped over one member, jit-compiled; compile
  timed separately) against a PyTorch eager twin of the same step (same weights, same batch,
  same physics loss, Adam), with the ratio and both first-step losses (same numerics). The two
  run in alternating blocks of consecutive steps (:func:`_alternating_blocks`).
* ``data``: building the 1+1-image dataset and one full evaluation (predict 1089 patches at
  the inference batch, stitch, score).
* ``model``: generator forward and forward+backward.
* ``layers``: forward and forward+backward of every layer of the generator, timed alone
  (``format_layers`` prints the table), against the whole generator.
* ``seeds``: K members in one program against K sequential single-member steps.
* ``profile``: a ``jax.profiler`` trace of K members' steps, summarised per device timeline
  (busy time per step against wall time, the most expensive kernels).
* ``loop``: the training loop's steps per second (logging, LR injection, batching included)
  against the bare jitted step on the same shapes.
* ``compile``: first-step time of a cold process against a second process that finds the
  persistent compilation cache filled.
Every step benchmark also reports XLA's FLOP count of the step and the achieved FLOP/s, and its
fraction of the device's nominal float32 peak where that is known.
"""

from __future__ import annotations

import pathlib
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
from jaxfno.models.bench import benchmark_layers, format_layers, median_seconds
from jaxfno.models.layers import execution_choices
from jaxfno.training.loop import build_engine, initial_state, init_params, sequential_batches

# Nominal dense float32 (non-tensor-core) peaks, FLOP/s; used only to report a fraction.
NOMINAL_FP32_PEAK = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}


STEPS_PER_BLOCK = 6


def _alternating_blocks(fns: dict[str, Callable[[], object]], rounds: int,
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


def _flops(engine, state, *args) -> float | None:
    analysis = engine.train_step.lower(state, *args).compile().cost_analysis()
    if isinstance(analysis, list):  # older jax returns one dict per computation
        analysis = analysis[0]
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _throughput(result: dict, flops: float | None, seconds: float) -> None:
    result["step_flops"] = flops
    if flops:
        result["achieved_flops_per_s"] = flops / seconds
        kind = getattr(jax.devices()[0], "device_kind", "")
        peak = next((v for k, v in NOMINAL_FP32_PEAK.items() if k in kind), None)
        result["fraction_of_fp32_peak"] = flops / seconds / peak if peak else None


def bench_step(dataset: Dataset, model: ModelConfig = ModelConfig(), batch: int = 16,
               repeats: int = 5, with_torch: bool = True) -> dict:
    cfg = RunConfig(model=model)
    cfg = cfg.replace(train=cfg.train.replace(batch_size=batch))
    x_np = np.ascontiguousarray(dataset.train.diffraction[:batch])
    result = {"arch": cfg.model.arch, "batch": batch, "repeats": repeats, "device": device_name(),
              "model": cfg.model.to_dict(), **execution_choices()}

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
    for name, (median, times, round_medians) in _alternating_blocks(steps, repeats).items():
        result[f"{name}_step_s"], result[f"{name}_step_all_s"] = median, times
        result[f"{name}_round_median_s"] = round_medians
    result["jax_compile_s"] = result["jax_first_call_s"] - result["jax_step_s"]
    _throughput(result, _flops(engine, state, train_x, idx, mask), result["jax_step_s"])
    if torch_model is not None:
        result["speedup_vs_torch"] = result["torch_step_s"] / result["jax_step_s"]
        # Each round's two blocks ran back to back: the median of their ratios is robust to
        # the machine's speed drifting over the run, which moves both medians.
        result["speedup_paired_median"] = statistics.median(
            t / j for t, j in zip(result["torch_round_median_s"], result["jax_round_median_s"]))
        result["first_loss_rel_diff"] = abs(result["jax_first_loss"] - result["torch_first_loss"]) / abs(
            result["torch_first_loss"])
    return result


def bench_data_and_eval(dataset: Dataset, model: ModelConfig = ModelConfig(), repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = {"dataset_build": benchmark_build(tmp)}
    cfg = RunConfig(model=model)
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
    result["evaluation_s"] = median_seconds(evaluate, repeats)
    result["evaluation_note"] = (f"predict the {test_x.shape[0]} test patches "
                                 f"(batch {cfg.train.infer_batch_size}), stitch, score")
    result["device"], result["model"] = device_name(), model.to_dict()
    return result


def bench_model(model: ModelConfig, batch: int = 16, repeats: int = 3) -> dict:
    return benchmark_forward_backward(model, batch=batch, repeats=repeats)


def bench_layers(model: ModelConfig, batch: int = 16, repeats: int = 3) -> dict:
    return benchmark_layers(model, batch=batch, repeats=repeats)


def _members_step(dataset: Dataset, model: ModelConfig, members: int, batch: int):
    """A compiled K-member step on one fixed batch: ``step()`` runs it and waits for it."""
    train_x = jax.numpy.asarray(np.ascontiguousarray(dataset.train.diffraction[:batch]))
    configs = [RunConfig(model=model).replace(train=RunConfig().train.replace(seed=s, batch_size=batch))
               for s in range(members)]
    graphdef, _, rest = nnx.eval_shape(lambda: init_params(model, jax.random.key(0)))
    engine, _ = build_engine(configs[0], dataset, graphdef, rest)
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
                repeats: int = 3) -> dict:
    """Step time of K members in one program vs K sequential single-member steps."""
    result = {"members": members, "batch": batch, "device": device_name(), "model": model.to_dict(),
              **execution_choices()}
    for k in sorted({1, members}):
        engine, step = _members_step(dataset, model, k, batch)
        result[f"step_s_k{k}"] = median_seconds(step, repeats)
        result["member_axis"], result["update"] = engine.member_axis, engine.update_scope
    result["sequential_s"] = members * result["step_s_k1"]
    result["together_over_one"] = result[f"step_s_k{members}"] / result["step_s_k1"]
    result["speedup_vs_sequential"] = result["sequential_s"] / result[f"step_s_k{members}"]
    return result


def bench_profile(dataset: Dataset, model: ModelConfig, trace_dir: pathlib.Path, members: int = 1,
                  batch: int = 16, steps: int = 5, top: int = 25) -> dict:
    """A ``jax.profiler`` trace of ``steps`` steps of K members (after compilation), summarised:
    wall time per step and, per device timeline (GPU streams, XLA op and module lines), the busy
    time per step and the ``top`` event names by time. Open the trace in Perfetto or TensorBoard
    for the full picture; on the CPU backend the trace has no device timelines."""
    _, step = _members_step(dataset, model, members, batch)
    trace_dir = pathlib.Path(trace_dir)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    trace_file = max(trace_dir.glob("plugins/profile/*/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    return {"members": members, "batch": batch, "steps": steps, "device": device_name(),
            "model": model.to_dict(), **execution_choices(),
            "wall_s_per_step": wall,
            "trace": str(trace_file), "timelines": summarise_trace(trace_file, steps, top)}


def summarise_trace(trace_file: pathlib.Path, steps: int, top: int = 25) -> dict:
    """Per device timeline of a Chrome-format trace: busy seconds per step (union of events) and
    the ``top`` event names by total seconds per step, with their counts per step."""
    import gzip
    import json

    events = json.loads(gzip.decompress(pathlib.Path(trace_file).read_bytes()))["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    lines: dict[str, list] = {}
    for e in events:
        if e.get("ph") == "X" and processes.get(e["pid"], "").startswith("/device:"):
            line = f"{processes[e['pid']]} {threads.get((e['pid'], e['tid']), e['tid'])}"
            lines.setdefault(line, []).append((e["ts"], e["dur"], e["name"]))
    summary = {}
    for line, spans in lines.items():
        spans.sort()
        busy, end = 0.0, -np.inf
        totals: dict[str, list] = {}
        for ts, dur, name in spans:
            busy += max(0.0, ts + dur - max(ts, end))
            end = max(end, ts + dur)
            entry = totals.setdefault(name, [0.0, 0])
            entry[0] += dur
            entry[1] += 1
        ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
        summary[line] = {  # trace times are microseconds
            "busy_s_per_step": busy * 1e-6 / steps,
            "events_per_step": len(spans) / steps,
            "top": [[name, total * 1e-6 / steps, count / steps] for name, (total, count) in ranked],
        }
    return summary


def format_profile(result: dict) -> str:
    lines = [f"{result['members']} member(s), batch {result['batch']}, conv3x3={result['conv3x3']}, "
             f"{result['device']}: wall {1e3 * result['wall_s_per_step']:.3f} ms per step"]
    for line, info in result["timelines"].items():
        lines.append(f"\n{line}: busy {1e3 * info['busy_s_per_step']:.3f} ms per step, "
                     f"{info['events_per_step']:.0f} events per step")
        lines += [f"  {1e3 * seconds:8.3f} ms  {count:6.1f}×  {name[:110]}" for name, seconds, count in info["top"]]
    if not result["timelines"]:
        lines.append("no device timelines in the trace (CPU backend)")
    return "\n".join(lines)


def bench_loop_overhead(dataset: Dataset, model: ModelConfig, steps: int = 20, batch: int = 16,
                        repeats: int = 5) -> dict:
    """Seconds per step inside ``train_members`` (median over epochs 2…repeats+1, after
    compilation) vs the bare jitted step of the same program: ``steps`` steps dispatched back to
    back on one batch, one sync at the end, as the loop does (median of ``repeats``)."""
    from jaxfno.training.loop import train_members

    cfg = RunConfig(model=model).replace(
        train=RunConfig().train.replace(epochs=1 + repeats, batch_size=batch, train_subset=batch * steps))
    with tempfile.TemporaryDirectory() as tmp:
        program = train_members([cfg], [pathlib.Path(tmp) / "run"], dataset)
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
