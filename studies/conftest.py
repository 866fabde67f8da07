"""Fixtures of the pytest study: one dataset, one lazily-run Study per session."""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxfno.data import ensure_dataset
from jaxfno.config import DataConfig
from jaxfno.io import cache_root
from jaxfno.study import stage_a
from jaxfno.study.runner import RunKey, Study

EXPECTATIONS = pathlib.Path(__file__).parent / "stage_a" / "expectations.json"


def study_plan(config) -> tuple[str, list[str], list[int]]:
    scale = config.getoption("--scale")
    seeds = config.getoption("--seeds") or stage_a.SCALES[scale].seeds
    return scale, list(stage_a.ARMS), stage_a.seeds_for(seeds)


def pytest_generate_tests(metafunc):
    if "run_key" in metafunc.fixturenames:
        _, arms, seeds = study_plan(metafunc.config)
        keys = [RunKey(a, s) for a in arms for s in seeds]
        metafunc.parametrize("run_key", keys, ids=[k.id for k in keys])


@pytest.fixture(scope="session")
def study(request, tmp_path_factory) -> Study:
    scale, arms, seeds = study_plan(request.config)
    out = request.config.getoption("--study-dir")
    out = pathlib.Path(out) if out else tmp_path_factory.mktemp(f"stage_a_{scale}")
    dataset = ensure_dataset(DataConfig(), cache_root() / "datasets")
    return Study(arms, scale, seeds, out, dataset)


@pytest.fixture(scope="session")
def expectations(request) -> dict:
    """Runs measured to collapse at this scale: run id → evidence (strict xfail reasons)."""
    scale = request.config.getoption("--scale")
    return json.loads(EXPECTATIONS.read_text())[scale]
