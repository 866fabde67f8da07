"""SPEC §6.3 outcomes: plateau, contrast, divergence events, the scale-free loss, one outcome."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfno import physics
from jaxfno.config import PhysicsConfig
from jaxfno.evaluation.outcomes import (amplitude_contrast, classify, constant_plateau,
                                        divergence_events, judge, lowest_trailing_median)


def _val_loss_of_constant(x, probe, cfg, c, batch_size):
    """The validation loss of a constant object c, batch by batch as the engine computes it."""
    losses, counts = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = jnp.asarray(x[start:start + batch_size])
        mask = jnp.ones(xb.shape[0])
        obj = jnp.full(xb.shape, c, jnp.complex64)
        amp = physics.predicted_amplitude(obj, probe, physics.batch_gain(mask, cfg.batch_gain),
                                          cfg.object_support)
        losses.append(float(physics.loss_terms(amp, xb, mask, cfg.loss)))
        counts.append(xb.shape[0])
    return float(np.dot(losses, counts) / np.sum(counts))


@pytest.mark.parametrize("gain,support", [("none", "full"), ("upstream", "full"), ("upstream", "central")])
def test_plateau_is_the_best_constant(grid_lines_dataset, gain, support):
    ds = grid_lines_dataset
    x, probe = ds.test.diffraction[:100], jnp.asarray(ds.probe_simulated)
    cfg = PhysicsConfig(batch_gain=gain, object_support=support)
    found = constant_plateau(x, probe, cfg, batch_size=16)  # 100 = 6 × 16 + 4: a short batch
    c = found["amplitude"]
    assert found["plateau"] == pytest.approx(_val_loss_of_constant(x, probe, cfg, c, 16), rel=1e-5)
    for factor in (0.9, 0.99, 1.01, 1.1):  # a minimum: every other constant does worse
        assert _val_loss_of_constant(x, probe, cfg, c * factor, 16) > found["plateau"]
    assert 0.05 < found["plateau"] < 1.0


def test_plateau_is_scale_free_under_the_gain(grid_lines_dataset):
    """With full batches only, the batch gain multiplies every prediction by 16: the best
    constant absorbs it, so the plateau is the gain-free one."""
    ds = grid_lines_dataset
    x, probe = ds.test.diffraction[:96], ds.probe_simulated
    plain = constant_plateau(x, probe, PhysicsConfig(), 16)
    gained = constant_plateau(x, probe, PhysicsConfig(batch_gain="upstream"), 16)
    assert gained["plateau"] == pytest.approx(plain["plateau"], rel=1e-5)
    assert gained["amplitude"] == pytest.approx(plain["amplitude"] / 16, rel=1e-4)


def test_scale_free_loss_finds_a_global_factor():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0.5, 2.0, (5, 4, 8, 8)), jnp.float32)
    masks = jnp.ones((5, 4)).at[-1, 2:].set(0.0)
    exact = physics.scale_free_loss(x / 16.0, x, masks, "mae")  # off by one global factor
    assert float(exact) < 1e-5
    noisy = x * jnp.asarray(rng.uniform(0.8, 1.2, x.shape), jnp.float32) / 3.0
    sf = float(physics.scale_free_loss(noisy, x, masks, "mae"))
    counts = np.asarray(masks.sum(1))

    def loss(a):
        per = [float(physics.loss_terms(a * noisy[s], x[s], masks[s], "mae")) for s in range(5)]
        return float(np.dot(per, counts) / counts.sum())

    grid = min(loss(a) for a in np.linspace(2.0, 4.5, 501))
    assert sf == pytest.approx(grid, rel=1e-3) and sf <= loss(1.0)


def test_contrast():
    rng = np.random.default_rng(1)
    truth = rng.uniform(1, 3, (40, 40)) * np.exp(1j * rng.uniform(-1, 1, (40, 40)))
    assert amplitude_contrast(truth, truth) == pytest.approx(1.0)
    assert amplitude_contrast(5 * truth, truth) == pytest.approx(1.0)  # scale-free
    assert amplitude_contrast(np.full((40, 40), 2.0 + 0j), truth) == 0.0


def _series(n=3000, level=0.1, seed=0):
    rng = np.random.default_rng(seed)
    return level * rng.uniform(0.9, 1.1, n), rng.uniform(1, 2, n)


def test_divergence_event_and_spikes():
    loss, grad = _series()
    loss[1500:1700] *= 20.0   # sustained departure
    grad[1550] = 1e4
    loss[2500] *= 50.0        # one isolated spike
    loss[430::431] = 0.44     # a short batch once per epoch: ≈ 4× the median, neither
    events, spikes = divergence_events(loss, grad, [431] * 7)
    # Five high steps of the ten ahead already lift their median (the middle two's mean) past 3×.
    assert [e["step"] for e in events] == [1495]
    assert events[0]["epoch"] == 1500 // 431 and events[0]["peak_grad_norm"] == 1e4
    assert events[0]["peak_loss"] == pytest.approx(loss[1495:1595].max())
    assert [s["step"] for s in spikes] == [2500]


def test_trailing_median_is_the_median_of_the_finite_losses_behind_each_step():
    import warnings

    from jaxfno.evaluation.outcomes import trailing_median

    loss = np.random.default_rng(0).lognormal(size=400)
    loss[[150, 151, 320]] = np.nan  # non-finite steps drop out of their windows
    loss[-120:] = np.nan  # a stopped run's tail: all-NaN windows have no median
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = [np.nanmedian(loss[max(k - 100, 0):k]) if k else np.nan for k in range(loss.size)]
    np.testing.assert_array_equal(trailing_median(loss), expected)


def test_lowest_trailing_median_stops_before_the_event():
    # epoch 1 at 1.0, then 150 steps at 0.5 and 150 at 0.2: windows wholly after step 100 only
    loss = [1.0] * 100 + [0.5] * 150 + [0.2] * 150
    assert lowest_trailing_median(loss, since=100) == pytest.approx(0.2)
    # up to the window just before step 300 (steps 200..299: half 0.5, half 0.2)
    assert lowest_trailing_median(loss, since=100, until=300) == pytest.approx(0.35)
    assert lowest_trailing_median(loss, since=350) is None  # no whole window after step 350


def test_no_event_in_the_first_epoch():
    loss, grad = _series(1000)
    loss[100:300] *= 20.0
    assert divergence_events(loss, grad, [431, 431, 138]) == ([], [])


@pytest.mark.parametrize("best,final,contrast,diverged,non_finite,expected", [
    (0.05, float("nan"), 0.5, False, True, "non_finite"),
    (0.05, 0.18, 0.01, True, False, "collapsed_constant"),
    (0.05, 0.18, 0.01, False, False, "collapsed_constant"),  # no event needed
    (0.05, 0.15, 0.3, True, False, "diverged"),
    (0.05, 0.07, 0.3, True, False, "diverged_recovered"),
    (0.17, 0.17, 0.02, False, False, "never_learned"),
    (0.05, 0.06, 0.9, False, False, "healthy"),
    (0.05, 0.15, 0.3, False, False, "healthy"),  # fell back without an event and kept contrast
])
def test_classify(best, final, contrast, diverged, non_finite, expected):
    assert classify(best, final, 0.2, contrast, diverged, non_finite) == expected


def test_judge_flags_scale_sensitive_outcomes():
    loss, grad = _series(431 * 5)
    loss[1000:] *= 20.0
    history = {"val_loss": [0.1, 0.06, 0.05, 0.3, 0.3], "val_loss_scale_free": [0.1, 0.06, 0.05, 0.06, 0.06],
               "step_loss": loss.tolist(), "grad_norm": grad.tolist(), "epoch_steps": [431] * 5,
               "nonfinite_step": None}
    out = judge(history, plateau=0.2, contrast=0.4)
    assert out["outcome"] == "diverged" and out["collapse"]
    assert out["outcome_scale_free"] == "diverged_recovered" and out["scale_sensitive"]
    assert out["time_to_divergence"] == {"step": 995, "observed": True, "epoch": 2}
    calm = dict(history, step_loss=_series(431 * 5)[0].tolist(), val_loss_scale_free=[0.1, 0.06])
    out = judge(calm, plateau=0.2, contrast=0.4)
    assert out["scale_sensitive"] is None  # a partial scale-free record is not used
    assert out["time_to_divergence"] == {"step": 431 * 5 - 1, "observed": False, "epoch": None}
