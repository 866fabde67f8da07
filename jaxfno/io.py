"""Files: atomic writes (a temp file in the destination folder, fsync, then ``os.replace``, so a
crash or a bad input never leaves a half-written artifact) and the cache location.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
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


def cache_root() -> pathlib.Path:
    """Where datasets and the persistent JAX compilation cache live; ``$JAXFNO_CACHE`` overrides."""
    return pathlib.Path(os.environ.get("JAXFNO_CACHE", pathlib.Path.home() / ".cache" / "jaxfno"))


def enable_compilation_cache() -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax_compilation"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
