"""Tests of jaxfno.evaluation: stitching, SSIM parity with scikit-image, scoring, floor, verdict."""

import json

import jax
import numpy as np
import pytest
import scipy.ndimage
import skimage.draw
from skimage.metrics import structural_similarity

from jaxfno.evaluation import (collapse_verdict, constant_floor, frc50, mae, meets_success, mse,
                               psnr255, score, ssim, stitch)


def _lines_test_object() -> np.ndarray:
    """The test-split object of SPEC §1.1/1.2 (seed 2, one image): complex 392 × 392, raw amplitude."""
    np.random.seed(2)
    size = 784
    canvas = np.zeros((size, size))
    for _ in range(400):
        r0, c0, r1, c1 = (int(size * np.random.uniform()) for _ in range(4))
        canvas[skimage.draw.line(r0, c0, r1, c1)] = 1
    smooth = sum(w * scipy.ndimage.gaussian_filter(canvas, s) for w, s in ((1, 1), (2, 5), (5, 10)))
    amplitude = smooth[196:588, 196:588]
    phase = np.pi * np.tanh((amplitude - amplitude.max() / 2) / (3 * amplitude.mean()))
    return amplitude * np.exp(1j * phase)


@pytest.fixture(scope="module")
def test_object() -> np.ndarray:
    return _lines_test_object()


@pytest.fixture(scope="module")
def ground_truth(test_object) -> np.ndarray:
    """SPEC §1.6: drop the last 8 rows/cols (392 → 384), clip 27 px per side → 330 × 330."""
    return test_object[:384, :384][27:357, 27:357]


@pytest.fixture(scope="module")
def floor(ground_truth):
    return constant_floor(ground_truth)


def _patches(image: np.ndarray, stride: int = 10, size: int = 64) -> np.ndarray:
    """Row-major stride-`stride` crops of `image` (SPEC §1.4)."""
    starts = range(0, image.shape[0] - size + 1, stride)
    return np.stack([image[r:r + size, c:c + size] for r in starts for c in starts])


# --- stitching ------------------------------------------------------------------------------

def test_stitch_recovers_ground_truth_window():
    image = np.random.default_rng(0).normal(size=(392, 392)) + 1j
    patches = _patches(image)
    assert patches.shape == (1089, 64, 64)
    np.testing.assert_array_equal(stitch(patches, 33, 27, 10), image[27:357, 27:357])
    stitched = jax.jit(stitch, static_argnums=(1, 2, 3))(patches.real.astype(np.float32), 33, 27, 10)
    np.testing.assert_array_equal(np.asarray(stitched), image.real[27:357, 27:357].astype(np.float32))


def test_stitch_rejects_wrong_patch_count():
    with pytest.raises(ValueError):
        stitch(np.zeros((1088, 64, 64)), 33, 27, 10)


def test_ground_truth_normalisation_constant(test_object):
    """ν of SPEC §1.4 (test ≈ 4.230): confirms the fixture matches the benchmark object."""
    nu = np.mean([p.max() for p in np.abs(_patches(test_object))])
    assert nu == pytest.approx(4.230, abs=5e-4)


# --- SSIM parity ----------------------------------------------------------------------------

def _image_pairs():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :80] / 10.0
    smooth = np.sin(xx) * np.cos(0.7 * yy) + 2
    noise = rng.normal(size=(96, 80))
    rough = 3 + rng.random((50, 70))
    pairs = {
        "uniform-noise": (rng.random((64, 64)), rng.random((64, 64))),
        "noisy-copy": (rough, rough + rng.normal(0, 0.1, rough.shape)),
        "structured": (smooth, smooth + 0.2 * noise),
        "anticorrelated": (smooth, 4 - smooth),
        "constant-vs-structured": (smooth, np.full_like(smooth, 2.0)),
        "offset-large": (1000 + smooth, 1000 + smooth + 0.1 * noise),
    }
    return [pytest.param(x, y, id=name) for name, (x, y) in pairs.items()]


@pytest.mark.parametrize("x,y", _image_pairs())
def test_ssim_matches_skimage(x, y):
    data_range = x.max() - x.min()
    reference = structural_similarity(x, y, data_range=data_range)
    with jax.enable_x64(True):  # 1e-8: at offset 1000 skimage's own E[x²] − E[x]² cancels
        assert float(ssim(x, y, data_range)) == pytest.approx(reference, abs=1e-8)
    single = jax.jit(ssim)(x.astype(np.float32), y.astype(np.float32), data_range)
    assert single.dtype == np.float32
    assert float(single) == pytest.approx(reference, abs=1e-5)


def test_ssim_identical_and_batched():
    x = np.random.default_rng(3).random((3, 40, 40))
    np.testing.assert_allclose(np.asarray(ssim(x, x, 1.0)), 1.0, atol=1e-6)
    y = x[::-1]
    batched = np.asarray(ssim(x, y, 1.0))
    single = [structural_similarity(a, b, data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_ssim_is_differentiable():
    x = np.random.default_rng(4).random((32, 32)).astype(np.float32)
    grad = jax.grad(lambda y: ssim(x, y, 1.0))(x * 0.5)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_pointwise_metrics_jit():
    x = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    y = x + 0.1
    values = jax.jit(lambda a, b: (mae(a, b), mse(a, b), psnr255(a, b)))(x, y)
    np.testing.assert_allclose(values, [0.1, 0.01, 20 * np.log10(2550)], rtol=1e-5)


# --- score ----------------------------------------------------------------------------------

def test_score_perfect_prediction(ground_truth):
    result = score(ground_truth, ground_truth)
    json.dumps(result)
    assert result["phase_vacuous"] is False
    assert result["ssim"] == [1.0, 1.0]
    assert result["mae"] == [0.0, 0.0]
    assert result["frc50"] == [164, 164]
    assert result["psnr255"][0] > 300


def test_score_is_invariant_to_amplitude_scale_and_phase_plane(ground_truth):
    rows, cols = np.indices(ground_truth.shape)
    plane = 0.002 * cols - 0.003 * rows + 0.3  # stays inside (−π, π): angle() does not wrap
    result = score(0.25 * ground_truth * np.exp(1j * plane), ground_truth)
    np.testing.assert_allclose(result["ssim"], [1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(result["mae"], [0.0, 0.0], atol=1e-9)


def test_pure_plane_phase_scores_like_constant(ground_truth, floor):
    rows, cols = np.indices(ground_truth.shape)
    plane_phase = np.abs(ground_truth) * np.exp(1j * (0.004 * rows + 0.003 * cols - 1))
    result = score(plane_phase, ground_truth)
    for key in ("mae", "mse", "ssim", "frc50"):
        assert result[key][1] == pytest.approx(floor[key][1], abs=1e-9)


def test_zero_prediction_gives_no_nan(ground_truth):
    result = score(np.zeros_like(ground_truth), ground_truth)
    assert result["mae"][0] == pytest.approx(np.abs(ground_truth[2:-2, 2:-2]).mean())
    assert all(v is not None for key in ("mae", "mse", "ssim", "psnr255") for v in result[key])


def test_phase_vacuous_on_zero_phase(ground_truth):
    target = np.abs(ground_truth).astype(np.complex64)
    result = score(ground_truth, target)
    assert result["phase_vacuous"] is True
    assert all(result[key][1] is None for key in ("mae", "mse", "ssim", "psnr255", "frc50"))
    assert result["ssim"][0] == pytest.approx(1.0)


def test_nonfinite_prediction_scores_none(ground_truth):
    bad = ground_truth.copy()
    bad[100, 100] = np.nan
    result = score(bad, ground_truth)
    json.dumps(result, allow_nan=False)
    assert result["ssim"] == [None, None]


def test_frc50_bounds():
    x = np.random.default_rng(5).random((64, 64))
    assert frc50(x, x) == 33
    assert frc50(x, np.full_like(x, x.mean())) == 1


# --- collapse floor -------------------------------------------------------------------------

def test_constant_floor_matches_spec(floor):
    json.dumps(floor)
    assert floor["ssim"][0] == pytest.approx(0.2771, abs=5e-4)
    assert floor["mae"][0] == pytest.approx(0.5131, abs=5e-4)
    assert floor["ssim"][1] == pytest.approx(0.8428, abs=5e-4)


def test_any_constant_scores_the_floor(ground_truth, floor):
    other = score(np.full(ground_truth.shape, 7.0 * np.exp(0.4j)), ground_truth)
    for key in ("mae", "mse", "ssim", "psnr255", "frc50"):
        np.testing.assert_allclose(other[key], floor[key], atol=1e-9)


# --- collapse verdict -----------------------------------------------------------------------

HEALTHY = {"train_loss": [0.2, 0.1, 0.05, 0.03], "val_loss": [0.2, 0.09, 0.04, 0.03],
           "nonfinite_step": None}


def _noisy(ground_truth, sigma=0.05):
    rng = np.random.default_rng(6)
    return ground_truth * (1 + sigma * rng.normal(size=ground_truth.shape))


def test_verdict_healthy(ground_truth, floor):
    prediction = _noisy(ground_truth)
    metrics = score(prediction, ground_truth)
    verdict = collapse_verdict(HEALTHY, prediction, ground_truth, floor, metrics)
    json.dumps(verdict)
    assert verdict["collapsed"] is False and verdict["rules"] == [] and verdict["epoch"] is None
    assert meets_success(metrics, verdict)


def test_verdict_non_finite(ground_truth, floor):
    history = dict(HEALTHY, nonfinite_step=1234, steps_per_epoch=431)
    verdict = collapse_verdict(history, _noisy(ground_truth), ground_truth, floor)
    assert verdict["rules"] == ["non_finite"]
    assert "non-finite at step 1234" in verdict["details"]["non_finite"]["message"]
    assert verdict["epoch"] == 2
    nan_loss = dict(HEALTHY, val_loss=[0.2, 0.1, float("nan")])
    verdict = collapse_verdict(nan_loss, _noisy(ground_truth), ground_truth, floor)
    assert verdict["rules"] == ["non_finite"] and verdict["epoch"] == 2


def test_verdict_constant_output(ground_truth, floor):
    constant = np.full(ground_truth.shape, 0.6 + 0j)
    verdict = collapse_verdict(HEALTHY, constant, ground_truth, floor)
    assert verdict["rules"] == ["constant_output"]
    assert verdict["details"]["constant_output"]["near_floor"]
    assert verdict["details"]["constant_output"]["flat"]
    assert verdict["epoch"] == 3
    assert not meets_success(score(constant, ground_truth), verdict)
    # Nearly constant with a 1 % texture: not flat by std/mean, but SSIM sits on the floor.
    textured = 1 + 0.01 * np.random.default_rng(7).normal(size=ground_truth.shape)
    verdict = collapse_verdict(HEALTHY, textured, ground_truth, floor)
    assert verdict["rules"] == ["constant_output"]
    assert not verdict["details"]["constant_output"]["flat"]
    # Dated by the per-epoch validation SSIM: on the floor from epoch 2 through the last.
    dated = {**HEALTHY, "val_amp_ssim": [0.28, 0.5, 0.28, 0.27]}
    verdict = collapse_verdict(dated, textured, ground_truth, floor)
    assert verdict["epoch"] == verdict["details"]["constant_output"]["epoch"] == 2


def test_verdict_learns_then_collapses(ground_truth, floor):
    history = {"train_loss": [0.2, 0.05, 0.03, 0.1, 0.19, 0.19],
               "val_loss": [0.2, 0.05, 0.024, 0.06, 0.18, 0.19]}
    verdict = collapse_verdict(history, _noisy(ground_truth), ground_truth, floor)
    assert verdict["rules"] == ["learns_then_collapses"]
    detail = verdict["details"]["learns_then_collapses"]
    assert (detail["best_epoch"], detail["onset_epoch"]) == (2, 4)
    assert verdict["epoch"] == 4


def test_verdict_records_all_rules_in_order(ground_truth, floor):
    history = {"train_loss": [0.2, 0.03, 0.19], "val_loss": [0.2, 0.024, 0.18],
               "nonfinite_step": 900, "steps_per_epoch": 431}
    constant = np.ones(ground_truth.shape, np.complex64)
    verdict = collapse_verdict(history, constant, ground_truth, floor)
    assert verdict["rules"] == ["non_finite", "constant_output", "learns_then_collapses"]
    assert verdict["epoch"] == 2


def test_success_thresholds():
    ok = {"collapsed": False}
    assert meets_success({"ssim": [0.80, 0.9], "mae": [0.15, 0.1]}, ok)
    assert not meets_success({"ssim": [0.79, 0.9], "mae": [0.1, 0.1]}, ok)
    assert not meets_success({"ssim": [0.9, 0.9], "mae": [0.16, 0.1]}, ok)
    assert not meets_success({"ssim": [0.9, 0.9], "mae": [0.1, 0.1]}, {"collapsed": True})
    assert not meets_success({"ssim": [None, None], "mae": [None, None]}, ok)
