"""Fixtures of the pytest study: datasets loaded once, one lazily-run Study per session."""

from __future__ import annotations

import functools
import json
import pathlib

import pytest

from jaxfno.config import DataConfig
from jaxfno.data import ensure_dataset
from jaxfno.io import cache_root
from jaxfno.study import stage_a
from jaxfno.study.runner import RunKey, Study

EXPECTATIONS = pathlib.Path(__file__).parent / "stage_a" / "expectations.json"


def study_plan(config) -> tuple[str, list[str], list[int], list[str]]:
    scale = config.getoption("--scale")
    seeds = config.getoption("--seeds") or stage_a.SCALES[scale].seeds
    conditions = config.getoption("--conditions") or list(stage_a.SCALES[scale].conditions)
    arms = config.getoption("--arms") or stage_a.default_arms(conditions, scale)
    return scale, arms, stage_a.seeds_for(seeds), conditions


def pytest_generate_tests(metafunc):
    if "run_key" in metafunc.fixturenames:
        _, arms, seeds, conditions = study_plan(metafunc.config)
        keys = [RunKey(a, s, c) for c in conditions for a in arms for s in seeds]
        metafunc.parametrize("run_key", keys, ids=[k.id for k in keys])


@pytest.fixture(scope="session")
def study(request, tmp_path_factory) -> Study:
    scale, arms, seeds, conditions = study_plan(request.config)
    out = request.config.getoption("--study-dir")
    out = pathlib.Path(out) if out else tmp_path_factory.mktemp(f"stage_a_{scale}")
    datasets = functools.lru_cache(maxsize=None)(lambda cfg: ensure_dataset(cfg, cache_root() / "datasets"))
    return Study(arms, scale, seeds, out, datasets, conditions=conditions, data=DataConfig())


@pytest.fixture(scope="session")
def expectations(request):
    """Runs measured to collapse at this scale on the device a run trained on (SPEC §6.3):
    ``expectations(history)`` maps run id → evidence (strict xfails)."""
    scale, sections = request.config.getoption("--scale"), json.loads(EXPECTATIONS.read_text())
    return lambda history: sections.get(stage_a.expectation_section(scale, history), {})
