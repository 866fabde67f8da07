"""Files: atomic writes (a temp file in the destination folder, fsync, then ``os.replace``, so a
crash or a bad input never leaves a half-written artifact) and the cache location.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import tempfile
import time
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(pathlib.Path(path).read_text())


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
