"""The datasets a command trains on: built or loaded from the cache (or a given folder),
once per job (process 0 first)."""

from __future__ import annotations

import pathlib

from jaxfno.config import DataConfig
from jaxfno.io import cache_root


def load_or_build_dataset(data_cfg: DataConfig, dataset_dir: str | None):
    from jaxfno.data import build_dataset, ensure_dataset, load_dataset
    from jaxfno.processes import primary_first

    def load_or_build():
        if dataset_dir is None:
            return ensure_dataset(data_cfg, cache_root() / "datasets")
        build_dataset(data_cfg, pathlib.Path(dataset_dir))
        return load_dataset(pathlib.Path(dataset_dir), expected=data_cfg)

    return primary_first(load_or_build)


def dataset_loader():
    """data config → dataset (built on first use, then from the cache), one load per config."""
    import functools

    return functools.lru_cache(maxsize=None)(lambda cfg: load_or_build_dataset(cfg, None))
