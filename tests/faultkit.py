"""Kill-anywhere harness for ``tests/test_faults.py``: run a ``jaxfno`` command in a subprocess,
SIGKILL it at a planned moment, run the same command again, and check what it left and what the
rerun made of it against an uninterrupted run.

A kill point is either *inside* the process (``fault``, see ``tests/faulthook/sitecustomize.py``:
exactly at a stage of a checkpoint or file write) or *from outside* (``when`` a condition on the
output directory holds, e.g. a checkpoint step appeared, then ``delay`` seconds later: mid-step,
mid-validation, mid-write of Orbax's files, start-up). Every attempt runs the same command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

HOOK_DIR = pathlib.Path(__file__).parent / "faulthook"
# Fields that measure time or describe the process: they differ between any two runs.
VOLATILE = {"timing", "epoch_seconds", "train_seconds", "execution"}
RTOL = 1e-6


@dataclasses.dataclass
class Kill:
    """Where to kill one attempt: ``fault`` (in-process hook spec) or ``when`` (a condition on
    the output directory, polled every few milliseconds) plus ``delay`` seconds."""

    label: str
    fault: str | None = None
    when: Callable[[pathlib.Path], bool] | None = None
    delay: float = 0.0


@dataclasses.dataclass
class Attempt:
    returncode: int
    killed: bool  # by the planned kill (hook fired, or the harness sent SIGKILL)
    fired: str  # what the hook wrote before dying, or what the harness saw
    stderr: str
    seconds: float


def env_for(fault: str | None, fired: pathlib.Path | None) -> dict:
    env = {**os.environ, "JAXFNO_HUGEPAGES": "0", "PYTHONWARNINGS": "default"}
    env.pop("JAXFNO_FAULT", None)
    if fault:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOK_DIR), env.get("PYTHONPATH")]))
        env["JAXFNO_FAULT"] = fault
        env["JAXFNO_FAULT_FIRED"] = str(fired)
    return env


def run(args: list[str], out: pathlib.Path, kill: Kill | None = None, timeout: float = 600) -> Attempt:
    """``python -m jaxfno *args`` (writing under ``out``), killed as ``kill`` says."""
    with tempfile.TemporaryDirectory() as tmp:
        fired_file = pathlib.Path(tmp) / "fired"
        fault = kill.fault if kill else None
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "jaxfno", *args], env=env_for(fault, fired_file),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = ""
        if kill is not None and kill.when is not None:
            seen = _kill_when(proc, out, kill, start + timeout)
        try:
            _, stderr = proc.communicate(timeout=max(1.0, start + timeout - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            raise AssertionError(f"jaxfno {' '.join(args)} ran past {timeout} s:\n{stderr}")
        fired = fired_file.read_text().strip() if fired_file.exists() else seen
        killed = proc.returncode == -signal.SIGKILL and bool(fired)
        return Attempt(proc.returncode, killed, fired, stderr, time.perf_counter() - start)


def _kill_when(proc: subprocess.Popen, out: pathlib.Path, kill: Kill, deadline: float) -> str:
    while proc.poll() is None and time.perf_counter() < deadline:
        try:
            hit = kill.when(out)
        except (OSError, ValueError):  # a file vanishing or half-read while polled
            hit = False
        if hit:
            if kill.delay:
                time.sleep(kill.delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                return f"{kill.label} (outside, {kill.delay:.2f} s after the condition)"
            return ""
        time.sleep(0.003)
    return ""


# --- conditions on a run directory ---------------------------------------------------------


def step_dir_exists(run: str, kind: str, epoch: int) -> Callable[[pathlib.Path], bool]:
    """A committed checkpoint step appeared (``run`` relative to the output directory)."""
    return lambda out: (out / run / "checkpoints" / kind / str(epoch) / "commit_success.txt").exists()


def step_tmp_exists(run: str, kind: str, epoch: int) -> Callable[[pathlib.Path], bool]:
    """Orbax started writing a step (its temporary directory holds array data)."""
    def cond(out):
        base = out / run / "checkpoints" / kind
        return any(base.glob(f"{epoch}.orbax-checkpoint-tmp*/state*/*"))
    return cond


def file_exists(path: str) -> Callable[[pathlib.Path], bool]:
    return lambda out: (out / path).exists()


def lock_taken(lock: pathlib.Path) -> Callable[[pathlib.Path], bool]:
    """The attempt's process took the writer lock ``lock`` (its holder line changed from what it
    was when first polled, at the attempt's start: a killed holder leaves its line behind)."""
    before: list = []

    def cond(out):
        text = lock.read_text() if lock.exists() else ""
        if not before:
            before.append(text)
            return False
        return bool(text) and text != before[0]
    return cond


# --- what a run left -------------------------------------------------------------------------


def last_checkpoint(run_dir: pathlib.Path) -> tuple[int | None, list | None]:
    """(epoch, its history's epoch_seconds) of the ``last`` checkpoint a rerun resumes from.
    The epoch seconds are measured times, unique to the process that trained those epochs: a
    rerun that resumed from this checkpoint carries them on unchanged."""
    import warnings

    from jaxfno.training import checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epoch = checkpoint.latest_epoch(run_dir)
        if epoch is None:
            return None, None
        _, meta = checkpoint.restore(run_dir, "last")
    return epoch, list(meta["history"]["epoch_seconds"])


def file_digests(run_dir: pathlib.Path) -> dict[str, tuple[int, str]]:
    """(mtime_ns, sha256) of every file below ``run_dir``."""
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def json_files_parse(out: pathlib.Path) -> list[str]:
    """The JSON files below ``out`` that do not parse (an atomic writer leaves none)."""
    bad = []
    for p in out.rglob("*.json"):
        try:
            json.loads(p.read_text())
        except ValueError:
            bad.append(str(p))
    return bad


def leftovers(run_dir: pathlib.Path) -> list[str]:
    """Partial files that killed writers left in a run directory and nothing removed: temporary
    files of atomic writes, Orbax's unfinished step directories."""
    found = [p for p in run_dir.glob(".*.tmp")] + [p for p in run_dir.glob("checkpoints/*/*") if "tmp" in p.name]
    return sorted(str(p.relative_to(run_dir)) for p in found)


def differences(a, b, where: str = "") -> list[str]:
    """Where two JSON-like trees differ beyond RTOL (NaN equals NaN; VOLATILE keys skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        for key in sorted(set(a) & set(b)):
            if key not in VOLATILE:
                out += differences(a[key], b[key], f"{where}/{key}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12):
            return []
        return [f"{where}: {a} != {b}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def history_prefix_differences(history: dict, reference: dict, epochs: int) -> list[str]:
    """Whether ``history`` (of ``epochs`` epochs) is the reference's first ``epochs`` epochs."""
    out = []
    for key in ("train_loss", "val_loss", "lr_epoch", "val_amp_ssim", "val_loss_scale_free"):
        out += differences(history[key], reference[key][:epochs], key)
    steps = sum(reference["epoch_steps"][:epochs])
    for key in ("step_loss", "grad_norm", "lr"):
        out += differences(history[key], reference[key][:steps], key)
    return out


def run_differences(run_dir: pathlib.Path, reference_dir: pathlib.Path) -> list[str]:
    """A finished run against the uninterrupted reference: its JSON artifacts, its stitched
    prediction and its checkpoints (epoch and arrays), to RTOL."""
    from jaxfno.training import checkpoint

    out = []
    for name in ("history.json", "metrics.json", "stats.json", "verdict.json", "config.json"):
        out += differences(json.loads((run_dir / name).read_text()),
                           json.loads((reference_dir / name).read_text()), name)
    with np.load(run_dir / "recon.npz") as got, np.load(reference_dir / "recon.npz") as want:
        for key in want.files:
            if not np.allclose(got[key], want[key], rtol=RTOL, atol=0):
                out.append(f"recon.npz/{key} differs")
    for kind in checkpoint.KINDS:
        got_epoch, want_epoch = checkpoint.latest_epoch(run_dir, kind), checkpoint.latest_epoch(reference_dir, kind)
        if got_epoch != want_epoch:
            out.append(f"checkpoints/{kind}: epoch {got_epoch} != {want_epoch}")
            continue
        if got_epoch is None and kind == "epochs":  # kept only when asked for
            continue
        got, _ = checkpoint.restore(run_dir, kind)
        want, _ = checkpoint.restore(reference_dir, kind)
        import jax

        for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                                     jax.tree_util.tree_flatten_with_path(want)[0]):
            if not np.allclose(x, y, rtol=RTOL, atol=1e-9):
                out.append(f"checkpoints/{kind}{jax.tree_util.keystr(path)} differs")
                break
    return out


@dataclasses.dataclass
class Row:
    kill: str
    fired: str
    left: str  # the last complete checkpoint after the kill
    resumed: str  # what the next attempt resumed from
    equal: bool
    detail: str = ""


def table(rows: list[Row]) -> str:
    lines = [f"{'#':>2}  {'kill point':<44} {'left on disk':<22} {'resumed':<26} equal",
             "-" * 104]
    for i, r in enumerate(rows, 1):
        lines.append(f"{i:>2}  {r.kill:<44} {r.left:<22} {r.resumed:<26} {'yes' if r.equal else 'NO'}"
                     + (f"  ({r.detail})" if r.detail else ""))
    lines.append(f"{sum(r.equal for r in rows)}/{len(rows)} equal to the uninterrupted run")
    return "\n".join(lines)


def kill_chain(args: list[str], out: pathlib.Path, runs: list[str], kills: list[Kill],
               reference: pathlib.Path, timeout: float = 600) -> list[Row]:
    """Run ``jaxfno *args`` (output under ``out``; its run directories ``runs``, relative to
    ``out`` and to ``reference``), killing attempt i at ``kills[i]``, then once to the end.
    After every kill: the JSON files parse, each run's ``last`` checkpoint holds the reference's
    history so far, finished runs are left byte for byte as they were and reused; the next
    attempt resumes from that checkpoint (its epoch seconds carry on) or starts afresh where
    there was none. At the end every run equals the reference. One row per kill."""
    rows: list[Row] = []
    pending: list[tuple[Kill, Attempt, dict, dict, dict]] = []
    ref_history = {r: json.loads((reference / r / "history.json").read_text()) for r in runs}

    def settle(next_attempt: Attempt) -> None:
        kill, attempt, left, finished, _ = pending.pop()
        problems = []
        if next_attempt.returncode not in (0, -signal.SIGKILL):
            problems.append(f"rerun failed ({next_attempt.returncode}): {next_attempt.stderr[-800:]}")
        resumed = []
        for r in runs:
            epoch, seconds = left[r]
            if r in finished:
                now = file_digests(out / r)
                changed = sorted(k for k in finished[r] if now.get(k) != finished[r][k])
                if changed:
                    problems.append(f"{r}: finished run rewritten ({', '.join(changed[:3])})")
                resumed.append("reused")
                continue
            history_file = out / r / "history.json"
            if epoch is None:
                resumed.append("start" if history_file.exists() else "not reached")
                continue
            history = json.loads(history_file.read_text())
            carried = _carried_epochs(history["epoch_seconds"], seconds)
            dropped = f"{out / r}: its checkpoint of epoch {epoch + 1} is dropped" in next_attempt.stderr
            if carried == epoch + 1:
                resumed.append(f"epoch {epoch + 1}")
            elif carried == epoch and dropped:  # realigned with the other runs of its program
                resumed.append(f"epoch {epoch} (aligned)")
            elif len(history["epoch_seconds"]) <= epoch + 1 and carried == len(history["epoch_seconds"]):
                resumed.append(f"epoch {epoch + 1}?")  # killed again before its first new epoch
            else:
                problems.append(f"{r}: did not resume from its epoch {epoch + 1} checkpoint "
                                f"(carried on {carried} epochs)")
                resumed.append("?")
        rows.append(Row(kill.label, attempt.fired, ", ".join(_left_text(left[r], r in finished) for r in runs),
                        ", ".join(resumed), not problems, "; ".join(problems)[:600]))

    for kill in kills:
        attempt = run(args, out, kill, timeout)
        if pending:  # this attempt resumed what the previous kill left
            settle(attempt)
        if not attempt.killed:
            rows.append(Row(kill.label, attempt.fired or "-", "-", "-", False,
                            f"not killed as planned (exit {attempt.returncode}): {attempt.stderr[-600:]}"))
            continue
        bad_json = json_files_parse(out)
        left, finished = {}, {}
        for r in runs:
            left[r] = last_checkpoint(out / r) if (out / r).exists() else (None, None)
            if (out / r / "verdict.json").exists():
                finished[r] = file_digests(out / r)
        problems = [f"unparsable JSON: {bad_json}"] if bad_json else []
        for r in runs:
            epoch = left[r][0]
            if epoch is not None:
                from jaxfno.training import checkpoint

                _, meta = checkpoint.restore(out / r, "last")
                problems += history_prefix_differences(meta["history"], ref_history[r], epoch + 1)
        if problems:
            rows.append(Row(kill.label, attempt.fired, "-", "-", False, "; ".join(problems)[:600]))
            continue
        pending.append((kill, attempt, left, finished, {}))
    final = run(args, out, None, timeout)
    if pending:
        settle(final)
    # The chain's end result, which every kill in it contributed to.
    problems = [f"final run failed ({final.returncode}): {final.stderr[-800:]}"] if final.returncode else []
    if not problems:
        problems = [f"{r}: {d}" for r in runs for d in run_differences(out / r, reference / r)[:5]]
        problems += [f"{r}: left behind: {', '.join(left)}" for r in runs if (left := leftovers(out / r))]
    for row in rows:
        if problems:
            row.equal = False
            row.detail = "; ".join(filter(None, [row.detail, "end result: " + "; ".join(problems)]))[:900]
    return rows


def _carried_epochs(now: list, before: list) -> int:
    """How many leading epochs ``now`` carries on from ``before`` (equal measured times)."""
    k = 0
    while k < min(len(now), len(before)) and now[k] == before[k]:
        k += 1
    return k


def _left_text(left: tuple, finished: bool) -> str:
    if finished:
        return "finished"
    epoch = left[0]
    return "no checkpoint" if epoch is None else f"ckpt epoch {epoch + 1}"
