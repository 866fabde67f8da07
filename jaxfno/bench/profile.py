"""A ``jax.profiler`` trace of K members' training steps, summarised per device timeline
(``jaxfno bench profile``)."""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np

from jaxfno.bench.step import members_step
from jaxfno.bench.timing import device_name
from jaxfno.config import ModelConfig
from jaxfno.data import Dataset
from jaxfno.execution import ExecutionConfig


def bench_profile(dataset: Dataset, model: ModelConfig, trace_dir: pathlib.Path, members: int = 1,
                  batch: int = 16, steps: int = 5, top: int = 25,
                  execution: ExecutionConfig = ExecutionConfig()) -> dict:
    """A ``jax.profiler`` trace of ``steps`` steps of K members (after compilation), summarised:
    wall time per step and, per device timeline (GPU streams, XLA op and module lines), the busy
    time per step and the ``top`` event names by time. Open the trace in Perfetto or TensorBoard
    for the full picture; on the CPU backend the trace has no device timelines."""
    _, step = members_step(dataset, model, members, batch, execution)
    trace_dir = pathlib.Path(trace_dir)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    trace_file = max(trace_dir.glob("plugins/profile/*/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    return {"members": members, "batch": batch, "steps": steps, "device": device_name(),
            "model": model.to_dict(), "execution": execution.record(),
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
    lines = [f"{result['members']} member(s), batch {result['batch']}, conv3x3={result['execution']['conv3x3']}, "
             f"{result['device']}: wall {1e3 * result['wall_s_per_step']:.3f} ms per step"]
    for line, info in result["timelines"].items():
        lines.append(f"\n{line}: busy {1e3 * info['busy_s_per_step']:.3f} ms per step, "
                     f"{info['events_per_step']:.0f} events per step")
        lines += [f"  {1e3 * seconds:8.3f} ms  {count:6.1f}×  {name[:110]}" for name, seconds, count in info["top"]]
    if not result["timelines"]:
        lines.append("no device timelines in the trace (CPU backend)")
    return "\n".join(lines)
