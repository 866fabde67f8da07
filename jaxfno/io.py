"""Files: atomic writes (a temp file in the destination folder, fsync, then ``os.replace``, so a
crash or a bad input never leaves a half-written artifact), reads that name the file they cannot
parse, and the cache location.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import tempfile
import time
from typing import Any, Iterator

import numpy as np


SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class NoSpaceError(RuntimeError):
    """A file could not be written for lack of disk space (or over a file size limit); the
    message names the file. The file's previous version, if any, is untouched."""


class UnreadableFile(ValueError):
    """A file holds no valid JSON (cut short, hand-edited, foreign); the message names it."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically. A
    write that fails for lack of space raises :class:`NoSpaceError` naming ``path``."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    except OSError as exc:
        _raise_if_no_space(path, exc)
        raise
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _raise_if_no_space(path, exc)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the temporary files that writers killed mid-write left in ``directory`` (the
    ``.<name>.<random>.tmp`` of :func:`atomic_path`; not recursive). Only for a directory that no
    other process writes: call it holding :func:`directory_lock`. Returns what was removed."""
    directory = pathlib.Path(directory)
    removed = [p for p in directory.glob(".*.tmp") if p.is_file()] if directory.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def _raise_if_no_space(path: pathlib.Path, exc: OSError) -> None:
    if exc.errno in SPACE_ERRNOS:
        kept = "its previous version is intact" if path.exists() else "nothing was written"
        raise NoSpaceError(f"cannot write {path}: no space left on the device ({exc.strerror}); "
                           f"{kept}: free space and run the same command again") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; :class:`UnreadableFile` naming it when it is not valid JSON (e.g.
    cut short). A missing file raises FileNotFoundError, which names it too."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnreadableFile(f"{path} is not valid JSON ({exc}): cut short, hand-edited or foreign") from None


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


class DirectoryBusy(RuntimeError):
    """Another live process is writing the directory."""


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike) -> Iterator[str | None]:
    """Hold ``path``'s writer lock (the file ``.<name>.lock`` beside it, so that wiping the
    directory keeps it) while the block runs. A second process fails at once with
    :class:`DirectoryBusy` naming the holder. The lock is an ``flock``, which the kernel
    releases when its process dies: the lock file a killed process leaves is taken over, and
    the block gets the old holder's description (else None)."""
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            raise DirectoryBusy(f"{path} is being written by another process ({holder}); wait for it "
                                "to finish or choose another directory") from None
        stale = os.pread(fd, 4096, 0).decode(errors="replace").strip() or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}"
                  .encode(), 0)
        try:
            yield stale
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def cache_root() -> pathlib.Path:
    """Where datasets and the persistent JAX compilation cache live; ``$JAXFNO_CACHE`` overrides."""
    return pathlib.Path(os.environ.get("JAXFNO_CACHE", pathlib.Path.home() / ".cache" / "jaxfno"))


def enable_compilation_cache() -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax_compilation"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
