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
