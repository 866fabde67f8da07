"""Orbax checkpoints of one member: ``checkpoints/last`` every epoch, ``checkpoints/best`` on
each new lowest val_loss, and ``checkpoints/epochs`` (every epoch from one on, kept: to branch
or inspect a run at any of them; off unless asked for). Steps are 0-based epoch indices. Each holds two items: ``state`` (params, clip and optimiser state as
plain nested dicts) and ``meta`` (JSON: the run config, the epoch, val_loss and the host-side
state needed to resume: history and schedule). ``CheckpointWriter`` writes them on one worker
thread on accelerators, so that training overlaps the disk writes.

What a killed, full or damaged disk can do to them (``tests/test_faults.py`` kills runs at every
stage of a save and damages their files):

* Orbax writes a step to a temporary directory and renames it, so an interrupted save never
  replaces a good checkpoint; the temporary directories a killed save leaves are removed when
  the kind is next written.
* ``last`` keeps the two newest epochs and ``meta`` records a SHA-256 digest of the state and
  the meta: a step that is incomplete, unreadable, or whose contents do not match the digest is
  skipped with a warning by :func:`latest_epoch` and :func:`restore`, which fall back to the
  previous good step (the resumed run retrains the epochs in between, to the same result).
  Where no good step is left, :func:`restore` raises :class:`CheckpointError` naming the step.
* ``best`` is written before ``last``: ``last`` marks an epoch done, so a run killed between the
  two retrains the epoch and writes ``best`` again (a step that already exists is replaced: a
  rerun supersedes it), instead of resuming past a ``best`` it never wrote.
* A save that fails for lack of space raises :class:`CheckpointError` saying so, after removing
  its partial files; the previous step is untouched.

Over ~300 lines because these guarantees are one concern: every read and write of a checkpoint
goes through the checks above.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

KINDS = ("last", "best", "epochs")
# Steps kept per kind: ``last`` keeps a spare to fall back to when its newest step is damaged, and
# so that members of one program killed between their saves can all resume from one epoch;
# ``epochs`` keeps them all (None).
KEEP = {"last": 2, "best": 1, "epochs": None}
INTEGRITY_KEY = "integrity"  # in the saved meta: digests of the state and of the rest of meta
TMP_MARKER = ".orbax-checkpoint-tmp"  # in the names of Orbax's unfinished step directories
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_SPACE_MESSAGES = ("No space left", "File too large", "Disk quota exceeded")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names its directory and step."""


def _manager(directory: pathlib.Path, read_only: bool = False, keep: int | None = 1) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
        ),
        item_names=("state", "meta"),
    )


class _DropTracebacks(logging.Filter):
    """Orbax's worker threads log the traceback of a failed write before it is re-raised to the
    caller, who reports it (:class:`CheckpointError`): keep them off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _quiet_orbax_errors():
    logger, quiet = logging.getLogger("absl"), _DropTracebacks()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _ignore_closed_loop_callbacks() -> None:
    """After a failed read TensorStore still completes the step's pending reads and calls back
    into Orbax's event loop, closed by then: each call reports "Event loop is closed" as an
    unraisable exception, a traceback per array on stderr. The error itself was reported
    (:class:`CheckpointError`); drop these, and only these."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxfno_checkpoint", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._jaxfno_checkpoint = True
    sys.unraisablehook = hook


def is_space_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a lack of disk space: ENOSPC,
    EFBIG (a file size limit) or EDQUOT, as an OSError or in TensorStore's message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS:
            return True
        if any(m in str(exc) for m in _SPACE_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _digest_state(plain: Any) -> str:
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(plain)[0],
                             key=lambda item: jax.tree_util.keystr(item[0])):
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype.str}|{leaf.shape}|".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


def _canonical_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, allow_nan=True, separators=(",", ":"))


def _digest_meta(meta: dict) -> str:
    return hashlib.sha256(_canonical_json(meta).encode()).hexdigest()


def _with_integrity(plain: Any, meta: dict) -> dict:
    """``meta`` (as JSON will give it back) with the digests of ``plain`` and of itself."""
    meta = json.loads(_canonical_json({k: v for k, v in meta.items() if k != INTEGRITY_KEY}))
    return {**meta, INTEGRITY_KEY: {"state_sha256": _digest_state(plain), "meta_sha256": _digest_meta(meta)}}


def to_plain(tree: Any) -> Any:
    """nnx.State / optax namedtuples → nested dicts of numpy arrays (layout-independent)."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {name: to_plain(getattr(tree, name)) for name in tree._fields}
    if isinstance(tree, (list, tuple)):
        return {str(i): to_plain(v) for i, v in enumerate(tree)}
    if isinstance(tree, dict):
        return {str(k): to_plain(v) for k, v in tree.items()}
    return np.asarray(tree)


def _copy_containers(obj: Any) -> Any:
    """A copy of a JSON-like tree's dicts and lists; leaves (numbers, strings) are immutable."""
    if isinstance(obj, dict):
        return {k: _copy_containers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_copy_containers(v) for v in obj]
    return obj


def from_plain(template: Any, plain: Any) -> Any:
    """Inverse of :func:`to_plain` guided by a template of the original structure."""
    if not jax.tree.leaves(template):
        return template  # empty optax states (EmptyState, {}) are not stored by Orbax
    if isinstance(template, nnx.State):
        state = jax.tree.map(lambda x: x, template)
        nnx.replace_by_pure_dict(state, from_plain(nnx.to_pure_dict(template), plain))
        return state
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(*(from_plain(getattr(template, n), plain[n]) for n in template._fields))
    if isinstance(template, (list, tuple)):
        return type(template)(from_plain(v, plain[str(i)]) for i, v in enumerate(template))
    if isinstance(template, dict):
        return {k: from_plain(v, plain[str(k)]) for k, v in template.items()}
    dtype = template.dtype if hasattr(template, "dtype") else np.asarray(template).dtype
    return np.asarray(plain, dtype=dtype)


def save(run_dir: pathlib.Path, kind: str, epoch: int, state: Any, meta: dict) -> None:
    """Save ``state`` and ``meta`` as step ``epoch`` of ``kind``. Steps from ``epoch`` on that are
    already there are replaced: a run that saves them again retrained them (see the module
    docstring). Raises :class:`CheckpointError` when the disk is full."""
    directory = pathlib.Path(run_dir) / "checkpoints" / kind
    plain = to_plain(state)
    meta = _with_integrity(plain, meta)
    try:
        with _quiet_orbax_errors(), _manager(directory, keep=KEEP[kind]) as manager:
            for step in manager.all_steps():
                if step >= epoch:
                    manager.delete(step)
            manager.save(
                epoch,
                args=ocp.args.Composite(state=ocp.args.StandardSave(plain), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            manager.wait_until_finished()
    except Exception as exc:
        for tmp in directory.glob(f"*{TMP_MARKER}*"):  # the partial step: free its space now
            shutil.rmtree(tmp, ignore_errors=True)
        if is_space_error(exc):
            n = len(_steps(directory))
            kept = (f" (checkpoints/epochs holds {n} epoch{'' if n == 1 else 's'} kept by --keep-epochs-from: "
                    "deleting those not needed frees space)" if kind == "epochs" else "")
            raise CheckpointError(
                f"cannot write checkpoint {directory / str(epoch)}: no space left on the device "
                f"({_first_line(exc)}); the previous checkpoint is intact: free space{kept} and run the same "
                "command again to resume from it") from None
        raise


class CheckpointWriter:
    """Saves checkpoints in submission order, on one worker thread when ``background`` (default:
    on accelerators, where the host is otherwise idle while the device trains; on the CPU a
    writer thread competes with XLA's compute threads, measured with `jaxfno bench loop`). In the
    background, device
    arrays are fetched and ``meta``'s containers copied at submission, so the caller may go on
    updating both (donated device buffers, growing history lists); host (numpy) arrays are kept
    by reference and must not be modified in place afterwards (copying a full-size member's
    state would cost each checkpoint; the training loop passes host snapshots it never modifies). A failed write is raised at the next ``save`` or at ``close``;
    ``close`` waits for every pending write. Use as a context manager."""

    def __init__(self, background: bool | None = None):
        if background is None:
            background = jax.default_backend() != "cpu"
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxfno-checkpoint")
                      if background else None)
        self._pending: list[Future] = []

    def save(self, run_dir: pathlib.Path, kinds: Sequence[str], epoch: int, state: Any,
             meta: dict) -> None:
        """Save one snapshot of ``state`` and ``meta`` as each of ``kinds`` (e.g. last and best);
        ``best`` first, ``last`` (which marks the epoch done) last."""
        kinds = sorted(kinds, key=lambda kind: kind == "last")
        plain = to_plain(jax.device_get(state))
        if self._pool is None:
            for kind in kinds:
                save(run_dir, kind, epoch, plain, meta)
            return
        self._raise_failures(wait=False)
        meta = _copy_containers(meta)
        for kind in kinds:
            self._pending.append(self._pool.submit(save, run_dir, kind, epoch, plain, meta))

    def _raise_failures(self, wait: bool) -> None:
        finished = [f for f in self._pending if wait or f.done()]
        self._pending = [f for f in self._pending if f not in finished]
        for future in finished:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._raise_failures(wait=True)

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _steps(directory: pathlib.Path) -> list[int]:
    """The committed steps of a kind, newest first (unfinished temporary directories excluded)."""
    if not directory.is_dir():
        return []
    try:
        with _quiet_orbax_errors(), _manager(directory, read_only=True) as manager:
            return sorted(manager.all_steps(), reverse=True)
    except Exception as exc:  # e.g. an unreadable step metadata file
        raise CheckpointError(f"{directory}: the checkpoint steps cannot be listed: {_first_line(exc)}") from None


def _read_step(directory: pathlib.Path, step: int) -> tuple[Any, dict]:
    """(plain state, meta) of one step; raises :class:`CheckpointError` saying what is wrong."""
    where = directory / str(step)
    if not (where / "commit_success.txt").is_file():
        raise CheckpointError(f"{where}: checkpoint of step {step} cannot be read: it was never "
                              "committed (commit_success.txt is missing)")
    try:
        with _quiet_orbax_errors(), _manager(directory, read_only=True) as manager:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        plain = jax.tree.map(np.asarray, dict(restored["state"]))
        meta = dict(restored["meta"])
    except Exception as exc:  # a damaged step directory: Orbax and TensorStore raise many kinds
        _ignore_closed_loop_callbacks()
        raise CheckpointError(f"{where}: checkpoint of step {step} cannot be read: {_first_line(exc)}") from None
    integrity = meta.pop(INTEGRITY_KEY, None)
    if integrity is not None:  # checkpoints written before 2026-12-03 carry no digests
        if not isinstance(integrity, dict) or integrity.get("meta_sha256") != _digest_meta(meta):
            raise CheckpointError(f"{where / 'meta'}: checkpoint of step {step} cannot be read: its "
                                  "meta does not match the digest saved with it (edited or damaged)")
        if integrity.get("state_sha256") != _digest_state(plain):
            raise CheckpointError(f"{where / 'state'}: checkpoint of step {step} cannot be read: its "
                                  "arrays do not match the digest saved with them (damaged)")
    if "epoch" in meta and meta["epoch"] != step:
        raise CheckpointError(f"{where}: checkpoint of step {step} cannot be read: its meta is of "
                              f"epoch {meta['epoch']}")
    return plain, meta


def _newest_good(directory: pathlib.Path, warn: bool = True) -> tuple[int, Any, dict] | None:
    """The newest step of ``directory`` that reads back whole, warning about each newer one that
    does not; None when there is no step. Raises the newest step's error when no step is good."""
    steps, errors = _steps(directory), []
    for step in steps:
        try:
            plain, meta = _read_step(directory, step)
        except CheckpointError as err:
            errors.append(err)
            continue
        if warn:
            for err in errors:
                warnings.warn(f"{err}; falling back to the previous checkpoint, step {step}", stacklevel=3)
        return step, plain, meta
    if errors:
        raise errors[0]
    return None


def latest_epoch(run_dir: pathlib.Path, kind: str = "last") -> int | None:
    """The epoch of the newest good ``kind`` checkpoint (see the module docstring; it reads the step
    whole), None when there is none. A damaged newer step is skipped with a warning; when every step is damaged
    the result is None, with a warning: a run then starts again from its first epoch."""
    directory = pathlib.Path(run_dir) / "checkpoints" / kind
    try:
        found = _newest_good(directory)
    except CheckpointError as err:
        warnings.warn(f"{err}; no good checkpoint is left in {directory}, so the run starts again "
                      "from its first epoch", stacklevel=2)
        return None
    return None if found is None else found[0]


def restore(run_dir: pathlib.Path, kind: str = "last", template: Any = None,
            step: int | None = None) -> tuple[Any, dict]:
    """Return (state, meta) of the newest good ``kind`` checkpoint (the epoch
    :func:`latest_epoch` gives), or of ``step`` exactly (no fallback: a damaged step raises).
    With ``template`` the state gets the template's structure (nnx.State, optax states); without
    it, plain nested dicts. Raises :class:`CheckpointError` (FileNotFoundError where there is no
    checkpoint, or no such step) naming the file."""
    directory = (pathlib.Path(run_dir) / "checkpoints" / kind).absolute()
    if step is None:
        found = _newest_good(directory)
        if found is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
    else:
        require_step(run_dir, kind, step)
        found = (step, *_read_step(directory, step))
    step, plain, meta = found
    if template is None:
        return plain, meta
    try:
        return from_plain(template, plain), meta
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{directory / str(step)}: checkpoint of step {step} holds a state of "
                              f"another structure than this run's ({type(exc).__name__}: {exc})") from None


def discard_after(run_dir: pathlib.Path, kind: str, epoch: int) -> None:
    """Delete the ``kind`` steps after ``epoch`` (e.g. so that the members of one program resume
    from the epoch they all reached)."""
    directory = pathlib.Path(run_dir) / "checkpoints" / kind
    with _manager(directory, keep=KEEP[kind]) as manager:
        for step in manager.all_steps():
            if step > epoch:
                manager.delete(step)


def steps(run_dir: pathlib.Path, kind: str = "last") -> list[int]:
    """The committed ``kind`` steps of a run, newest first, without reading them (see
    :func:`good_epochs`)."""
    return _steps(pathlib.Path(run_dir) / "checkpoints" / kind)


def require_step(run_dir: pathlib.Path, kind: str, step: int) -> None:
    """Raise FileNotFoundError, listing the steps there are, unless ``kind`` holds ``step``."""
    directory = (pathlib.Path(run_dir) / "checkpoints" / kind).absolute()
    held = _steps(directory)
    if step not in held:
        raise FileNotFoundError(f"{directory}: no checkpoint of step {step} (epoch {step + 1}); it holds "
                                f"{', '.join(map(str, sorted(held))) or 'none'}")


def good_epochs(run_dir: pathlib.Path, kind: str = "last") -> list[int]:
    """Every ``kind`` step that reads back whole, newest first (reads each one)."""
    directory = pathlib.Path(run_dir) / "checkpoints" / kind
    good = []
    for step in _steps(directory):
        with contextlib.suppress(CheckpointError):
            _read_step(directory, step)
            good.append(step)
    return good
