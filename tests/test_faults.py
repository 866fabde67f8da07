"""Faults (issue 20): two processes on one run directory; runs killed anywhere (SIGKILL at
planned points, then the same command again); a full disk; damaged or foreign files.

The kill table of the slow test: ``pytest -m faults -s tests/test_faults.py``. The harness is
``tests/faultkit.py``; the in-process kill points are in ``tests/faulthook/sitecustomize.py``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

import faultkit  # tests/ is on sys.path (pytest's rootdir-relative import of test modules)
from faultkit import Kill
from jaxfno.config import DataConfig, RunConfig
from jaxfno.data import DatasetError, build_dataset, load_dataset
from jaxfno.io import DirectoryBusy, UnreadableFile, directory_lock, read_json
from jaxfno.pipeline import RunDirError, RunResult, prepare_run_dir
from jaxfno.training import checkpoint

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

TINY = ["--width", "2", "--blocks", "2", "--modes", "2", "--train-subset", "32", "--epochs", "3"]
ENGINE = "jaxfno.training.engine:Engine"


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
    """Three kills in one run's life, each rerun with the same command: epoch 2's ``best``
    committed and its ``last`` written but not committed (the rerun trains epoch 2 again and
    replaces that ``best``; Orbax's temporary directory is removed); the final epoch's ``last``
    just committed (``best`` must already be there); mid-report (metrics.json written, not
    renamed; its temporary file is removed). Each resumes from its last complete checkpoint and
    the run ends equal to the uninterrupted one, with nothing partial left."""
    out = tmp_path / "run"
    kills = [Kill("best ep2 committed, last ep2 written", fault="ckpt-write@last/1"),
             Kill("last ep3 committed", fault="ckpt-commit@last/2"),
             Kill("mid report (metrics.json)", fault="write@metrics.json")]
    rows = faultkit.kill_chain(_train_args(grid_lines_dataset_path, out), out, ["."], kills, tiny_reference)
    _assert_all_equal(rows, 3)


def _train_kills(out: pathlib.Path, reference: pathlib.Path) -> list[Kill]:
    """A run's life in order, each kill after the point the previous one left it at."""
    lock = out.parent / f".{out.name}.lock"
    return [
        Kill("start-up: run dir bound, nothing trained", when=faultkit.file_exists("config.json")),
        Kill("epoch 1 compiling/training (timed)", when=faultkit.file_exists("config.json"), delay=1.5),
        Kill("best ep1 written, not committed", fault="ckpt-write@best/0"),
        Kill("best ep1 committed, last not yet", fault="ckpt-commit@best/0"),
        Kill("last ep1 written, not committed", fault="ckpt-write@last/0"),
        Kill("last ep1 committed", fault="ckpt-commit@last/0"),
        Kill("setup: restoring the checkpoint (timed)", when=faultkit.lock_taken(lock), delay=0.3),
        Kill("mid step 2 of epoch 2", fault=f"call@{ENGINE}.train_step#2"),
        Kill("mid validation, epoch 2", fault=f"call@{ENGINE}.evaluate"),
        Kill("history.json ep2 written, not renamed", fault="write@history.json"),
        Kill("history.json ep2 renamed", fault="written@history.json"),
        Kill("best ep2 written, not committed", fault="ckpt-write@best/1"),
        Kill("best ep2 committed, last not yet", fault="ckpt-commit@best/1"),
        Kill("last ep2 committed", fault="ckpt-commit@last/1"),
        Kill("mid step 1 of epoch 3", fault=f"call@{ENGINE}.train_step"),
        Kill("best ep3 committed, last not yet", fault="ckpt-commit@best/2"),
        Kill("old step (last ep1) half deleted", fault="ckpt-delete@last/0"),
        Kill("mid final prediction", fault=f"call@{ENGINE}.predict"),
        Kill("recon.npz written, not renamed", fault="write@recon.npz"),
        Kill("recon.png written, not renamed", fault="write@recon.png"),
        Kill("final history.json renamed", fault="written@history.json"),
        Kill("stats.json written, not renamed", fault="write@stats.json"),
        Kill("verdict.json written, not renamed", fault="write@verdict.json"),
        Kill("finished, process not yet exited", fault="written@verdict.json"),
    ]


def _study_args(out) -> list[str]:
    return ["study", "stage-a", "--scale", "smoke", "--arms", "stable", "stable_lowlr", "control",
            "--seeds", "1", "--out", str(out)]


STUDY_RUNS = [f"fixed/{arm}/seed20260128" for arm in ("stable", "stable_lowlr", "control")]


@pytest.mark.faults
@pytest.mark.slow
def test_killed_anywhere_resumes_to_the_uninterrupted_result(grid_lines_dataset_path, tiny_reference, tmp_path):
    """≥ 20 kills (SIGKILL) at different points of a tiny ``jaxfno train``, and of a smoke study
    whose first program trains two runs together; each followed by the same command. Prints the
    kill table; every row must say yes: the JSON files parse, each run's last checkpoint holds the
    uninterrupted history so far, finished runs are left as they were and reused, the rerun
    resumes from the last complete checkpoint, and the end result equals the uninterrupted run."""
    rows = []
    try:
        out = tmp_path / "train" / "run"
        rows += faultkit.kill_chain(_train_args(grid_lines_dataset_path, out), out, ["."],
                                    _train_kills(out, tiny_reference), tiny_reference)
        out = tmp_path / "train2" / "run"  # a timed kill last: if late, no later kill is missed
        rows += faultkit.kill_chain(_train_args(grid_lines_dataset_path, out), out, ["."],
                                    [Kill("mid Orbax array write, best ep1 (timed)",
                                          when=faultkit.step_tmp_exists(".", "best", 0))], tiny_reference)
        reference = tmp_path / "study_reference"
        attempt = faultkit.run(_study_args(reference), reference)
        assert attempt.returncode == 0, attempt.stderr
        out = tmp_path / "study"
        kills = [
            Kill("study: between two members' last ep2", fault="ckpt-commit@last/1"),
            Kill("study: first member's run finished", fault="written@verdict.json"),
            Kill("study: 2nd program, mid validation", fault=f"call@{ENGINE}.evaluate#3"),
            Kill("study: mid report (summary)", fault="write@summary.md"),
        ]
        rows += faultkit.kill_chain(_study_args(out), out, STUDY_RUNS, kills, reference)
    finally:
        print("\n" + faultkit.table(rows))
    assert len(rows) >= 20
    assert all(r.equal for r in rows), faultkit.table(rows)


# --- a full disk (issue 20 item 3) ---------------------------------------------------------------


# ``jaxfno ARGS`` whose files may not grow past LIMIT bytes (RLIMIT_FSIZE), as on a full disk:
# with SIGXFSZ ignored a write past it fails with EFBIG instead of killing the process. Both
# survive the exec (set here rather than in a preexec_fn: pytest's process runs JAX's threads).
FILE_SIZE_LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
os.execv(sys.executable, [sys.executable, "-m", "jaxfno", *sys.argv[2:]])
"""


FULL_DISK_SCRIPT = """
import json, pathlib, resource, signal, sys
import numpy as np
from jaxfno.io import NoSpaceError, write_json
from jaxfno.training import checkpoint

run = pathlib.Path(sys.argv[1])
state = {"w": np.arange(64, dtype=np.float32)}
checkpoint.save(run, "last", 0, state, {"epoch": 0, "history": [1.0]})
checkpoint.save(run, "epochs", 0, state, {"epoch": 0, "history": [1.0]})
write_json(run / "history.json", {"val_loss": [1.0]})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))  # the disk fills up
out = {}
try:
    checkpoint.save(run, "last", 1, {"w": np.random.default_rng(0).random(100_000, np.float32)}, {"epoch": 1, "history": [1.0, 0.5]})
except checkpoint.CheckpointError as err:
    out["checkpoint_error"] = str(err)
try:
    checkpoint.save(run, "epochs", 1, {"w": np.random.default_rng(0).random(100_000, np.float32)}, {"epoch": 1, "history": [1.0, 0.5]})
except checkpoint.CheckpointError as err:
    out["epochs_error"] = str(err)
try:
    write_json(run / "history.json", {"val_loss": list(range(10_000))})
except NoSpaceError as err:
    out["json_error"] = str(err)
out["latest"] = checkpoint.latest_epoch(run)
restored, meta = checkpoint.restore(run, "last")
out["restored"] = restored["w"].tolist() == state["w"].tolist() and meta["epoch"] == 0
out["history"] = json.loads((run / "history.json").read_text())
out["leftovers"] = sorted(p.name for p in run.rglob("*") if "tmp" in p.name)
print(json.dumps(out))
"""


@pytest.mark.faults
def test_a_full_disk_fails_a_save_cleanly_and_keeps_the_previous_one(tmp_path):
    """A checkpoint and a JSON write that hit a full disk (RLIMIT_FSIZE, in a subprocess) raise
    one clear error each, naming the file and the lack of space; the previous checkpoint restores,
    the previous history.json is intact, and no partial file is left behind. A kept epoch's
    error names the kept epochs as space to free."""
    done = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cannot write checkpoint" in out["checkpoint_error"] and "last/1" in out["checkpoint_error"]
    assert "no space left" in out["checkpoint_error"] and "previous checkpoint is intact" in out["checkpoint_error"]
    assert "kept by" not in out["checkpoint_error"]
    assert "epochs/1" in out["epochs_error"] and "checkpoints/epochs holds 1 epoch kept by --keep-epochs-from" in out["epochs_error"]
    assert f"cannot write {tmp_path / 'run' / 'history.json'}: no space left" in out["json_error"]
    assert out["latest"] == 0 and out["restored"]
    assert out["history"] == {"val_loss": [1.0]}
    assert out["leftovers"] == []
    assert "Traceback" not in done.stderr  # Orbax's worker threads log none


@pytest.mark.faults
def test_a_full_disk_stops_a_run_with_one_line_naming_the_file(grid_lines_dataset_path, tiny_reference, tmp_path):
    """``jaxfno train`` on a disk that fills up as the final prediction is written (a run trained
    to its last epoch, resumed with a 1 MB file limit: recon.npz does not fit): exit 1 with one
    line naming the file and the lack of space, no traceback; the last checkpoint restores;
    nothing partial is left."""
    out = _copy_run(tiny_reference, tmp_path)
    for name in ("verdict.json", "stats.json", "metrics.json", "recon.npz", "recon.png"):
        (out / name).unlink()
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, "1000000",
                           *_train_args(grid_lines_dataset_path, out)],
                          capture_output=True, text=True, timeout=600, env=faultkit.env_for(None, None))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jaxfno: error: cannot write {out / 'recon.npz'}: no space left on the device"), last
    assert checkpoint.latest_epoch(out) == 2
    _, meta = checkpoint.restore(out, "last")
    assert faultkit.history_prefix_differences(meta["history"], read_json(tiny_reference / "history.json"), 3) == []
    assert not (out / "verdict.json").exists() and not list(out.glob(".*.tmp"))


# --- damaged and foreign files (issue 20 item 4) -------------------------------------------------


def _copy_run(reference: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def _truncate_arrays(step_dir: pathlib.Path) -> None:
    for f in (step_dir / "state").rglob("d/*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.faults
def test_a_damaged_checkpoint_falls_back_to_the_previous_good_step(tiny_reference, tmp_path):
    run = _copy_run(tiny_reference, tmp_path)
    last = run / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir()) == ["1", "2"]  # the newest and a spare
    _truncate_arrays(last / "2")
    with pytest.warns(UserWarning, match=r"last/2: checkpoint of step 2 cannot be read.*falling back to the "
                                         r"previous checkpoint, step 1"):
        assert checkpoint.latest_epoch(run) == 1
    with pytest.warns(UserWarning, match="falling back"):
        _, meta = checkpoint.restore(run, "last")
    assert meta["epoch"] == 1
    reference = read_json(tiny_reference / "history.json")
    assert faultkit.history_prefix_differences(meta["history"], reference, 2) == []

    # A hand-edited meta (a val_loss changed in the step's JSON) is caught by the digest.
    meta_file = last / "1" / "meta" / "metadata"
    edited = json.loads(meta_file.read_text())
    edited["val_loss"] *= 0.5
    meta_file.write_text(json.dumps(edited))
    with pytest.raises(checkpoint.CheckpointError, match=r"last/2: checkpoint of step 2 cannot be read"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint.restore(run, "last")
    with pytest.warns(UserWarning, match="no good checkpoint is left .* starts again from its first epoch"):
        assert checkpoint.latest_epoch(run) is None
    with pytest.raises(checkpoint.CheckpointError, match=r"last/1/meta: checkpoint of step 1 cannot be read: "
                                                         r"its meta does not match the digest"):
        checkpoint._read_step(last, 1)

    # The only best step, truncated: an error naming it, from no deeper than this module.
    _truncate_arrays(run / "checkpoints" / "best" / "2")
    with pytest.raises(checkpoint.CheckpointError, match=r"best/2: checkpoint of step 2 cannot be read") as err:
        checkpoint.restore(run, "best")
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.faults
def test_a_foreign_checkpoint_is_named(tmp_path):
    checkpoint.save(tmp_path / "run", "last", 0, {"w": np.zeros(3, np.float32)}, {"epoch": 0})
    with pytest.raises(checkpoint.CheckpointError, match=r"last/0: checkpoint of step 0 holds a state of another "
                                                         r"structure"):
        checkpoint.restore(tmp_path / "run", "last", template={"params": {"kernel": np.zeros(3, np.float32)}})


@pytest.mark.faults
def test_a_run_resumes_from_the_previous_checkpoint_when_the_newest_is_damaged(
        grid_lines_dataset_path, tiny_reference, tmp_path):
    """An unfinished run whose newest checkpoint was cut short: the same command warns, goes
    back one epoch, trains it again and ends equal to the uninterrupted run."""
    run = _copy_run(tiny_reference, tmp_path)
    for name in ("verdict.json", "stats.json", "metrics.json", "recon.npz", "recon.png"):
        (run / name).unlink()
    _truncate_arrays(run / "checkpoints" / "last" / "2")
    done = subprocess.run([sys.executable, "-m", "jaxfno", *_train_args(grid_lines_dataset_path, run)],
                          capture_output=True, text=True, timeout=600, env=faultkit.env_for(None, None))
    assert done.returncode == 0, done.stderr
    assert "checkpoint of step 2 cannot be read" in done.stderr and "falling back" in done.stderr
    assert faultkit.run_differences(run, tiny_reference) == []


@pytest.mark.faults
def test_damaged_or_edited_run_files_are_named(tiny_reference, tmp_path):
    run = _copy_run(tiny_reference, tmp_path)
    cfg = RunConfig.from_dict(read_json(run / "config.json"))

    # history.json cut short in a finished run: readers name it; the run is evaluated again.
    text = (run / "history.json").read_text()
    (run / "history.json").write_text(text[: len(text) // 2])
    with pytest.raises(UnreadableFile, match=f"{run / 'history.json'} is not valid JSON"):
        RunResult.load(run)
    with pytest.warns(UserWarning, match="history.json is not valid JSON.*evaluating the run again from its last "
                                         "checkpoint"):
        assert prepare_run_dir(run, cfg) == "started"
    assert not (run / "verdict.json").exists()

    # config.json hand-edited: to another config, to something that is no config, cut short.
    edited = read_json(run / "config.json")
    edited["optim"]["lr"] *= 2
    (run / "config.json").write_text(json.dumps(edited))
    with pytest.raises(RunDirError, match="holds a run of another config"):
        prepare_run_dir(run, cfg)
    edited["optim"]["lr"] = "fast"
    (run / "config.json").write_text(json.dumps(edited))
    with pytest.raises(RunDirError, match=f"{run / 'config.json'} is not a run config"):
        prepare_run_dir(run, cfg)
    (run / "config.json").write_text(text[:10])
    with pytest.raises(RunDirError, match=f"{run / 'config.json'} is not a run config .*not valid JSON"):
        prepare_run_dir(run, cfg)
    assert (run / "checkpoints").exists()  # nothing was wiped


@pytest.mark.faults
def test_a_hand_edited_config_stops_the_command_with_one_line(grid_lines_dataset_path, tiny_reference, tmp_path):
    run = _copy_run(tiny_reference, tmp_path)
    (run / "config.json").write_text('{"data": {"phase": ')
    done = subprocess.run([sys.executable, "-m", "jaxfno", *_train_args(grid_lines_dataset_path, run)],
                          capture_output=True, text=True, timeout=600, env=faultkit.env_for(None, None))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"jaxfno: error: {run / 'config.json'} is not a run config")


@pytest.mark.faults
def test_a_replaced_dataset_file_is_named(grid_lines_dataset_path, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(grid_lines_dataset_path / "provenance.json", data)
    (data / "train.npz").symlink_to(grid_lines_dataset_path / "train.npz")
    np.savez(data / "test.npz", diffraction=np.zeros((2, 4, 4), np.float32))  # another file in its place
    with pytest.raises(DatasetError, match=f"{data / 'test.npz'}: hash mismatch"):
        load_dataset(data)
    with pytest.raises(DatasetError, match=f"{data / 'test.npz'}: hash mismatch.*delete the directory to rebuild"):
        build_dataset(DataConfig(), data)
    (data / "provenance.json").write_text((grid_lines_dataset_path / "provenance.json").read_text()[:40])
    with pytest.raises(DatasetError, match=f"{data / 'provenance.json'} is not valid JSON"):
        load_dataset(data)
