"""Forward model and losses (SPEC §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfno import physics
from jaxfno.config import PhysicsConfig
from jaxfno.data import noise_floor

RNG = np.random.default_rng(0)


def _random_object(b=4):
    return (RNG.normal(size=(b, 64, 64)) + 1j * RNG.normal(size=(b, 64, 64))).astype(np.complex64)


def test_far_field_convention():
    out = physics.far_field(jnp.ones((64, 64), jnp.complex64))
    assert out.dtype == jnp.complex64
    expected = np.zeros((64, 64))
    expected[32, 32] = 64.0  # DC at (32, 32), ortho norm: sum / 64
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)
    obj = _random_object()
    ref = np.fft.fftshift(np.fft.fft2(obj.astype(np.complex128), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(np.asarray(physics.far_field(obj)), ref, rtol=1e-4, atol=1e-4)


def test_object_from_output():
    y = RNG.normal(size=(2, 64, 64, 2)).astype(np.float32)
    obj = np.asarray(physics.object_from_output(y))
    np.testing.assert_array_equal(obj.real, y[..., 0])
    np.testing.assert_array_equal(obj.imag, y[..., 1])


def test_central_support_ignores_outside():
    obj, probe = _random_object(), _random_object(1)[0]
    changed = obj.copy()
    changed[:, :16] = 0
    changed[:, 48:, :] = 7
    changed[:, 20:30, 50:] = -3j
    central = [physics.predicted_amplitude(o, probe, object_support="central")
               for o in (obj, changed)]
    np.testing.assert_array_equal(np.asarray(central[0]), np.asarray(central[1]))
    inner = np.zeros_like(obj)
    inner[:, 16:48, 16:48] = obj[:, 16:48, 16:48]
    np.testing.assert_allclose(np.asarray(central[0]),
                               np.asarray(physics.predicted_amplitude(inner, probe)), atol=1e-5)
    assert not np.allclose(np.asarray(physics.predicted_amplitude(obj, probe)),
                           np.asarray(central[0]))


def test_forward_model_reproduces_noiseless_diffraction(grid_lines_dataset):
    ds = grid_lines_dataset
    split = ds.train
    idx = slice(0, 256)
    psi = (split.Y_I[idx].astype(np.float64) * np.exp(1j * split.Y_phi[idx].astype(np.float64))
           * ds.probe_simulated.astype(np.complex128))
    reference = np.abs(np.fft.fftshift(np.fft.fft2(psi, norm="ortho"), axes=(-2, -1)))
    pred = np.asarray(jax.jit(physics.predicted_amplitude)(
        jnp.asarray(split.object_patches[idx]), physics.forward_probe(ds)))
    assert np.linalg.norm(pred - reference) / np.linalg.norm(reference) < 1e-5
    assert np.abs(pred - reference).max() / reference.max() < 1e-5
    np.testing.assert_allclose(np.asarray(physics.forward_probe(ds)),
                               ds.probe_guess / ds.probe_scale, rtol=1e-6)
    # The noisy measurement is close to, but not equal to, the noiseless amplitude.
    measured = split.diffraction[idx]
    rel = np.abs(measured - reference).mean() / reference.mean()
    assert 0 < rel < 0.01


def test_noise_floor_small_and_positive(grid_lines_dataset):
    ds = grid_lines_dataset
    floor = noise_floor(ds.train, ds.probe_simulated)
    assert 1e-4 < floor < 1e-2
    # The training loss on true patches with the default config is the same quantity.
    out = np.stack([ds.train.Y_I[:16] * np.cos(ds.train.Y_phi[:16]),
                    ds.train.Y_I[:16] * np.sin(ds.train.Y_phi[:16])], axis=-1)
    loss = physics.physics_loss(out, ds.train.diffraction[:16, ..., None], jnp.ones(16),
                                physics.forward_probe(ds), PhysicsConfig())
    assert 1e-4 < float(loss) < 1e-2


def _mae_numpy(a, x):
    return np.abs(a - x).mean() / (x.mean() + 1e-8)


def test_mae_formula_and_masking():
    a = RNG.random((16, 64, 64)).astype(np.float32)
    x = RNG.random((16, 64, 64)).astype(np.float32)
    mask = np.r_[np.ones(9), np.zeros(7)].astype(np.float32)
    padded_a, padded_x = a.copy(), x.copy()
    padded_a[9:], padded_x[9:] = np.nan, 1e6  # padding must not leak in, even NaN
    loss = physics.loss_terms(padded_a, padded_x, mask, "mae")
    np.testing.assert_allclose(float(loss), _mae_numpy(a[:9], x[:9]), rtol=1e-5)
    full = physics.loss_terms(a, x, np.ones(16, np.float32), "mae")
    np.testing.assert_allclose(float(full), _mae_numpy(a, x), rtol=1e-5)
    grad = jax.grad(physics.loss_terms)(jnp.asarray(a), x, mask, "mae")
    assert np.all(np.asarray(grad)[9:] == 0) and np.any(np.asarray(grad)[:9] != 0)


def test_mae_denominator_carries_no_gradient():
    a = RNG.random((2, 64, 64)).astype(np.float32)
    x = RNG.random((2, 64, 64)).astype(np.float32)
    grad_x = np.asarray(jax.grad(physics.loss_terms, argnums=1)(a, jnp.asarray(x),
                                                                jnp.ones(2), "mae"))
    expected = -np.sign(a - x) / (a.size * (x.mean() + 1e-8))
    np.testing.assert_allclose(grad_x, expected, rtol=1e-4)


def test_poisson_nll_minimised_at_measurement():
    x = (RNG.random((4, 64, 64)) + 0.1).astype(np.float32)
    mask = jnp.ones(4)
    loss = lambda a: physics.loss_terms(a, x, mask, "poisson")  # noqa: E731
    counts = x.astype(np.float64) ** 2
    expected = (counts - counts * np.log(counts + 1e-8)).sum() / 4
    np.testing.assert_allclose(float(loss(jnp.asarray(x))), expected, rtol=1e-5)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(x)))
    assert np.abs(grad).max() < 1e-5
    assert float(loss(jnp.asarray(x * 1.1))) > float(loss(jnp.asarray(x)))
    assert float(loss(jnp.asarray(x * 0.9))) > float(loss(jnp.asarray(x)))
    padded = jnp.concatenate([jnp.asarray(x), jnp.full((2, 64, 64), jnp.nan)])
    np.testing.assert_allclose(
        float(physics.loss_terms(padded, np.concatenate([x, x[:2]]), jnp.r_[mask, 0, 0],
                                 "poisson")), float(loss(jnp.asarray(x))), rtol=1e-6)


def test_batch_gain():
    mask = jnp.asarray(np.r_[np.ones(9), np.zeros(7)], jnp.float32)
    assert float(physics.batch_gain(mask, "none")) == 1.0
    assert float(physics.batch_gain(mask, "upstream")) == 9.0
    assert float(physics.batch_gain(jnp.ones(16), "upstream")) == 16.0


@pytest.mark.parametrize("support", ["full", "central"])
def test_physics_loss_glue_and_upstream_gain(support):
    out = RNG.normal(size=(16, 64, 64, 2)).astype(np.float32)
    x = RNG.random((16, 64, 64, 1)).astype(np.float32)
    mask = jnp.asarray(np.r_[np.ones(9), np.zeros(7)], jnp.float32)
    probe = _random_object(1)[0]
    obj = physics.object_from_output(out)
    for gain_mode, gain in (("none", 1.0), ("upstream", 9.0)):
        cfg = PhysicsConfig(batch_gain=gain_mode, object_support=support)
        step = jax.jit(lambda o, m, p: physics.physics_loss(o, x, m, p, cfg))  # noqa: B023
        amp = gain * physics.predicted_amplitude(obj, probe, object_support=support)
        np.testing.assert_allclose(float(step(out, mask, probe)),
                                   float(physics.loss_terms(amp, x, mask, "mae")), rtol=1e-5)


def test_physics_loss_gradient():
    out = jnp.asarray(RNG.normal(size=(4, 64, 64, 2)), jnp.float32)
    x = RNG.random((4, 64, 64)).astype(np.float32)
    probe = _random_object(1)[0]
    for support in ("full", "central"):
        cfg = PhysicsConfig(object_support=support)
        grad = np.asarray(jax.jit(jax.grad(
            lambda o: physics.physics_loss(o, x, jnp.ones(4), probe, cfg)))(out))  # noqa: B023
        assert np.all(np.isfinite(grad)) and np.any(grad != 0)
        if support == "central":
            outside = np.ones((64, 64), bool)
            outside[16:48, 16:48] = False
            assert np.all(grad[:, outside] == 0)
