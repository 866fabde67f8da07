"""Schedules, clipping and optimiser construction (SPEC §4) without a model."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfno.config import ConfigError, OptimConfig, RunConfig, TrainConfig
from jaxfno.training.engine import update_scope
from jaxfno.training.optim import LRSchedule, build_transforms, scheduled_lr, with_hyperparam


def test_warmup_cosine_matches_spec_example():
    cfg = OptimConfig(lr=5e-4, scheduler="warmup_cosine", warmup_epochs=5, lr_min_ratio=0.05)
    lrs = [scheduled_lr(cfg, 20, e) for e in range(20)]
    expected_start = [5.0e-5, 1.4e-4, 2.3e-4, 3.2e-4, 4.1e-4, 5.0e-4, 4.95e-4, 4.79e-4]
    np.testing.assert_allclose(lrs[:8], expected_start, rtol=0.01)
    assert lrs[-1] == pytest.approx(3.0e-5, rel=0.02)
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))  # monotone decay after warmup


def test_constant_and_asrun_schedules():
    assert scheduled_lr(OptimConfig(lr=1e-3), 20, 7) == 1e-3
    # Upstream's never-stepped WarmupCosine: constant at its first value, 0.1 × lr.
    asrun = OptimConfig(lr=5e-4, scheduler="asrun_warmup")
    assert [scheduled_lr(asrun, 20, e) for e in range(20)] == pytest.approx([5e-5] * 20)


def test_plateau_halves_after_patience_and_respects_min():
    schedule = LRSchedule(OptimConfig(lr=1e-3, scheduler="plateau"), epochs=20)
    lrs = []
    for epoch, val in enumerate([1.0] + [0.9] * 19):
        lrs.append(schedule.lr(epoch))
        schedule.observe(epoch, val)
    assert lrs[:5] == [1e-3] * 5  # patience 2: three bad epochs before the first cut
    assert lrs[5] == pytest.approx(5e-4)
    assert min(lrs) == pytest.approx(1e-4)  # floored at plateau_min_lr


def test_plateau_never_raises_a_rate_below_its_floor():
    schedule = LRSchedule(OptimConfig(lr=5e-5, scheduler="plateau"), epochs=10)  # floor 1e-4
    for epoch in range(10):
        assert schedule.lr(epoch) == 5e-5
        schedule.observe(epoch, 1.0)


def test_schedule_state_round_trips_for_resume():
    a = LRSchedule(OptimConfig(lr=1e-3, scheduler="plateau"), epochs=20)
    for epoch, val in enumerate([1.0, 1.0, 1.0, 1.0]):
        a.observe(epoch, val)
    b = LRSchedule(OptimConfig(lr=1e-3, scheduler="plateau"), epochs=20)
    b.load(a.to_dict())
    assert b.lr(4) == a.lr(4) < 1e-3


@pytest.mark.parametrize("algorithm", ["norm", "value", "agc", "agc_tensor"])
def test_clip_threshold_is_injected_and_effective(algorithm):
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    grads = {"w": jnp.full((4, 3), 10.0), "b": jnp.full((3,), -10.0)}
    tx = build_transforms(OptimConfig(grad_clip=0.5, grad_clip_algorithm=algorithm)).clip
    state = tx.init(params)
    clipped, _ = tx.update(grads, state, params)
    assert optax.tree.norm(clipped) < optax.tree.norm(grads)
    loose, _ = tx.update(grads, with_hyperparam(state, "threshold", 1e9), params)
    np.testing.assert_allclose(optax.tree.norm(loose), optax.tree.norm(grads), rtol=1e-6)


def test_global_norm_clip_respects_threshold():
    params = {"w": jnp.ones((8,))}
    tx = build_transforms(OptimConfig(grad_clip=0.5, grad_clip_algorithm="norm")).clip
    state = tx.init(params)
    for scale in (0.1, 1.0, 100.0):
        grads = {"w": jnp.arange(8.0) * scale}
        clipped, _ = tx.update(grads, state, params)
        norm, post = float(optax.tree.norm(grads)), float(optax.tree.norm(clipped))
        assert post <= 0.5 * (1 + 1e-6) if norm > 0.5 else post == pytest.approx(norm)


def test_no_clip_leaves_gradient_unchanged():
    params = {"w": jnp.ones((8,))}
    tx = build_transforms(OptimConfig(grad_clip=0.0)).clip
    grads = {"w": jnp.arange(8.0) * 1e6}
    clipped, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(clipped["w"], grads["w"])


def test_learning_rate_is_injected():
    params = {"w": jnp.ones((3,))}
    tx = build_transforms(OptimConfig(optimizer="sgd", momentum=0.0, lr=1.0)).optimizer
    state = with_hyperparam(tx.init(params), "learning_rate", 0.25)
    updates, _ = tx.update({"w": jnp.ones((3,))}, state, params)
    np.testing.assert_allclose(updates["w"], -0.25)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(optimizer="rmsprop"), "optimizer"), (dict(scheduler="cyclic"), "scheduler"),
    (dict(grad_clip_algorithm="foo"), "grad_clip_algorithm"),
])
def test_bad_optim_config_is_rejected(bad, match):
    with pytest.raises(ConfigError, match=match):
        OptimConfig(**bad)


def test_warmup_must_be_shorter_than_training():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        RunConfig(optim=OptimConfig(scheduler="warmup_cosine", warmup_epochs=5),
                  train=TrainConfig(epochs=5))


def test_config_json_round_trip_and_stable_hash():
    cfg = RunConfig(optim=OptimConfig(lr=2.5e-4, scheduler="warmup_cosine"))
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert cfg.replace(train=cfg.train.replace(seed=1)).config_hash() != cfg.config_hash()


@pytest.mark.parametrize("changes, scope", [
    ({}, "reachable"),
    ({"optimizer": "sgd", "momentum": 0.9, "grad_clip_algorithm": "value"}, "reachable"),
    ({"optimizer": "adamw", "weight_decay": 0.0}, "reachable"),
    ({"optimizer": "adamw", "weight_decay": 0.01}, "full"),  # decay moves unreachable entries
    ({"grad_clip_algorithm": "agc"}, "full"),  # reads the whole parameter's norm
    ({"grad_clip_algorithm": "agc_tensor"}, "full"),
])
def test_update_is_restricted_only_where_exact(changes, scope):
    transforms = build_transforms(OptimConfig(grad_clip=1.0, **changes))
    assert update_scope(transforms) == scope
    assert update_scope(transforms, "full") == "full"
