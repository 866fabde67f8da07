"""The study as data (conditions, scales, identification), hash-stable config extensions, and
the statistics of SPEC §7.2."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from jaxfno.config import ConfigError, RunConfig, TrainConfig
from jaxfno.report.statistics import (fisher_less, kaplan_meier, km_median, logrank_p, paired_sign_less,
                                      stratified_fisher_less, wilson_interval)
from jaxfno.study import stage_a

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_conditions_set_data_physics_and_batches():
    asrun = stage_a.config("stable_warmup_clip", "full", 7, condition="asrun")
    assert asrun.data.set_phi and asrun.physics.batch_gain == "upstream" and not asrun.train.drop_last
    assert not stage_a.config("stable", "full", 7, condition="asrun_zero_phase").data.set_phi
    assert asrun.optim == stage_a.ARMS["stable_warmup_clip"].optim  # the arm's recipe is untouched
    fixed = stage_a.config("stable_warmup_clip", "full", 7, condition="fixed")
    assert fixed.data.set_phi and fixed.physics.batch_gain == "none"
    assert stage_a.config("stable", "full", 7, condition="asrun_zero_phase_drop_last").train.drop_last
    no_kick = stage_a.config("stable", "full", 7, condition="asrun_drop_last")
    assert no_kick.train.drop_last and no_kick.data.set_phi and no_kick.physics.batch_gain == "upstream"
    assert no_kick == stage_a.config("stable", "full", 7, condition="asrun").with_overrides(["train.drop_last=true"])
    assert stage_a.config("stable", "full", 7, condition="asrun_central").physics.object_support == "central"
    with pytest.raises(ValueError, match="runs only in the 'fixed' condition"):
        stage_a.config("stable_upstream_gain", "full", 7, condition="asrun")


def test_identify_finds_every_arm_and_condition_of_a_config():
    cfg = stage_a.config("stable", "full", 20260130, condition="asrun")
    # upstream's batch gain with set_phi on is both a hypothesis arm and a condition of `stable`
    assert set(stage_a.identify(cfg, "full")) == {("stable", "asrun"), ("stable_upstream_gain", "fixed")}
    assert stage_a.identify(stage_a.config("control", "smoke", 1, condition="asrun"), "smoke") == [("control", "asrun")]
    assert stage_a.identify(stage_a.config("control", "smoke", 1), "full") == []


def test_added_config_fields_keep_earlier_hashes():
    """A run recorded before ``train.stop_after`` existed keeps its config hash, so its
    directory and checkpoints stay bound to it."""
    run = ROOT / "results" / "stage_a_full_cpu_upstream_gain" / "control_stable"
    raw = json.loads((run / "config.json").read_text())
    assert "stop_after" not in raw["train"]
    cfg = RunConfig.from_dict(raw)
    assert cfg.config_hash() == json.loads((run / "stats.json").read_text())["config_hash"]
    assert cfg.to_dict() == raw
    truncated = cfg.replace(train=cfg.train.replace(stop_after=8))
    assert truncated.config_hash() != cfg.config_hash() and truncated.to_dict()["train"]["stop_after"] == 8
    assert RunConfig.from_json(truncated.to_json()) == truncated
    with pytest.raises(ConfigError, match="stop_after"):
        TrainConfig(epochs=5, stop_after=6)


def test_wilson_and_fisher():
    low, high = wilson_interval(2, 3)
    assert (low, high) == pytest.approx((0.2077, 0.9385), abs=1e-3)
    assert fisher_less(0, 8, 6, 8) == pytest.approx(stats.fisher_exact([[0, 8], [6, 2]], alternative="less").pvalue)
    assert fisher_less(0, 8, 6, 8) < 0.01 and fisher_less(6, 8, 0, 8) > 0.99
    # stratified: one stratum is Fisher's; two, the enumeration of both hypergeometrics
    assert stratified_fisher_less([(1, 4, 3, 5)]) == pytest.approx(fisher_less(1, 4, 3, 5))
    h1, h2 = stats.hypergeom(9, 4, 4), stats.hypergeom(6, 3, 3)
    brute = sum(h1.pmf(i) * h2.pmf(j) for i in range(5) for j in range(4) if i + j <= 2)
    assert stratified_fisher_less([(1, 4, 3, 5), (1, 3, 2, 3)]) == pytest.approx(brute)
    # paired: concordant pairs carry no information; 1 of 5 discordant pairs the other way
    pairs = [(False, True)] * 4 + [(True, False)] + [(True, True), (False, False)]
    assert paired_sign_less(pairs) == pytest.approx(6 / 32) and paired_sign_less([(True, True)]) == 1.0


def test_kaplan_meier_matches_scipy():
    times = [5, 8, 8, 12, 20, 20, 20]
    observed = [True, True, False, True, False, False, False]
    grid, surv = kaplan_meier(times, observed)
    t = np.asarray(times, float)
    e = np.asarray(observed)
    ref = stats.ecdf(stats.CensoredData(uncensored=t[e], right=t[~e])).sf
    assert np.allclose(surv[1:], ref.evaluate(grid[1:]))
    assert km_median(times, observed) is None  # S stays above 0.5
    assert km_median([1, 2, 3], [True, True, True]) == 2


def test_logrank():
    assert logrank_p([10, 10], [False, False], [10, 10], [False, False]) is None
    early = logrank_p([1, 2, 3, 4, 5, 6], [True] * 6, [100] * 6, [False] * 6)
    assert early < 0.01
