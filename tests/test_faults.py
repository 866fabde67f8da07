"""Faults: two processes on one run directory; a killed writer's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from jaxfno.io import DirectoryBusy, directory_lock

HOLDER = """
import sys, time
from jaxfno.io import directory_lock
with directory_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once_naming_the_first(grid_lines_dataset_path, tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jaxfno", "train", "--out", str(run), "--dataset", str(grid_lines_dataset_path),
             "--width", "2", "--blocks", "2", "--modes", "2", "--epochs", "1", "--train-subset", "16"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "JAXFNO_HUGEPAGES": "0"})
        assert done.returncode == 1, done.stderr
        assert f"is being written by another process (pid {holder.pid} " in done.stderr
        assert not (run / "history.json").exists()  # nothing was trained or written
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_writers_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    with pytest.raises(DirectoryBusy, match=f"pid {holder.pid} "):
        with directory_lock(run):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with directory_lock(run) as stale:
        assert stale is not None and f"pid {holder.pid} " in stale
    with directory_lock(run) as stale:  # released cleanly: nothing stale the next time
        assert stale is None


# --- kill anywhere (issue 20 item 1) -------------------------------------------------------------

import pathlib  # noqa: E402

import faultkit  # noqa: E402  (tests/ is on sys.path: rootdir conftest)
from faultkit import Kill  # noqa: E402

TINY = ["--width", "2", "--blocks", "2", "--modes", "2", "--train-subset", "32", "--epochs", "3"]


def _train_args(dataset, out) -> list[str]:
    return ["train", "--out", str(out), "--dataset", str(dataset), *TINY]


@pytest.fixture(scope="module")
def tiny_reference(grid_lines_dataset_path, tmp_path_factory) -> pathlib.Path:
    """An uninterrupted tiny ``jaxfno train`` (3 epochs): what every killed run must end up as."""
    out = tmp_path_factory.mktemp("reference") / "run"
    attempt = faultkit.run(_train_args(grid_lines_dataset_path, out), out)
    assert attempt.returncode == 0, attempt.stderr
    return out


def _assert_all_equal(rows, minimum):
    print("\n" + faultkit.table(rows))
    assert len(rows) >= minimum
    assert all(r.equal for r in rows), faultkit.table(rows)


@pytest.mark.faults
def test_killed_train_resumes_to_the_uninterrupted_result(grid_lines_dataset_path, tiny_reference, tmp_path):
    """Three kills in one run's life, each rerun with the same command: mid-checkpoint write
    (before Orbax's commit), right after a commit (old step not yet deleted), mid-report (the
    final metrics.json written, not renamed): each resumes from its last complete checkpoint and
    the run ends equal to the uninterrupted one."""
    out = tmp_path / "run"
    kills = [Kill("mid checkpoint write (last, epoch 2)", fault="ckpt-write@last/1"),
             Kill("after checkpoint commit (last, epoch 2)", fault="ckpt-commit@last/1"),
             Kill("mid report (metrics.json)", fault="write@metrics.json")]
    rows = faultkit.kill_chain(_train_args(grid_lines_dataset_path, out), out, ["."], kills,
                               tiny_reference.parent / tiny_reference.name)
    _assert_all_equal(rows, 3)
