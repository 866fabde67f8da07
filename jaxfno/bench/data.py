"""Building and loading a dataset, timed (part of ``jaxfno bench data``)."""

from __future__ import annotations

import pathlib
import tempfile
import time
from typing import Any

from jaxfno.config import DataConfig
from jaxfno.data import build_dataset, load_dataset
from jaxfno.data.probe import resolve_probe
from jaxfno.data.simulate import simulate


def bench_build(tmpdir) -> dict[str, Any]:
    """A fresh default (1 + 1 image) dataset in a new folder under ``tmpdir``: the simulation
    alone, then the whole build (simulation, write, hashes), then loading it with verification."""
    cfg = DataConfig()
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir=tmpdir) as work:
        t0 = time.perf_counter()
        probe, _ = resolve_probe(cfg.probe)
        train, test, _ = simulate(cfg, probe)
        t1 = time.perf_counter()
        path = build_dataset(cfg, pathlib.Path(work) / cfg.config_hash())
        t2 = time.perf_counter()
        load_dataset(path, expected=cfg)
        t3 = time.perf_counter()
    return {"config_hash": cfg.config_hash(), "n_train": len(train["Y_I"]), "n_test": len(test["Y_I"]),
            "simulate_s": t1 - t0, "build_s": t2 - t1, "load_verify_s": t3 - t2}
