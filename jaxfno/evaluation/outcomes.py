"""One outcome per run (SPEC §6.3): the constant plateau, amplitude contrast, divergence events.

The §6.1 verdict (:mod:`.collapse`) fires on healthy-but-weak runs and misses a fall back to the
constant plateau at this project's loss levels; the outcome measures both against the run's own
data. Steps are global 0-based indices into the history's per-step lists; epochs are 0-based.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import optimize

from jaxfno import physics
from jaxfno.config import PhysicsConfig

from .metrics import TRIM

OUTCOMES = ("non_finite", "collapsed_constant", "diverged", "diverged_recovered", "never_learned",
            "healthy")
COLLAPSE_OUTCOMES = ("non_finite", "collapsed_constant", "diverged")  # P(collapse) counts these
LEARNED_RATIO = 0.8      # learned: best val ≤ 0.8 × plateau
CONSTANT_CONTRAST = 0.1  # collapsed_constant: final contrast below this
FALLBACK = 0.5           # final val ≥ best + 0.5 × (plateau − best): fell back towards the plateau
DIVERGENCE_RATIO, AHEAD, BEHIND, PEAK_WINDOW = 3.0, 10, 100, 100
SPIKE_RATIO = 10.0


def epoch_steps(history: Mapping[str, Any]) -> list[int]:
    """The number of steps of each recorded epoch. A branch may change it (``drop_last``,
    ``batch_size``); a history written before ``epoch_steps`` existed has one count for all."""
    if "epoch_steps" in history:
        return list(history["epoch_steps"])
    return [history["steps_per_epoch"]] * len(history["val_loss"])


# --- quantities ---------------------------------------------------------------------------------

def amplitude_cv(image, trim: int = TRIM) -> float:
    """std/mean of an image's amplitude, ``trim`` px cut from every side (0 for an all-zero one)."""
    a = np.abs(np.asarray(image, np.complex128))
    a = a[trim:a.shape[0] - trim, trim:a.shape[1] - trim] if trim else a
    return float(a.std() / a.mean()) if a.mean() > 0 else 0.0


def amplitude_contrast(stitched, ground_truth, trim: int = TRIM) -> float:
    """std/mean of the stitched amplitude (trimmed as in SPEC §5) over the ground truth's ratio."""
    return amplitude_cv(stitched, trim) / amplitude_cv(ground_truth, trim)


def constant_plateau(test_diffraction, probe, physics_cfg: PhysicsConfig, batch_size: int) -> dict:
    """The lowest validation loss of a spatially constant object, and its amplitude.

    The validation loss is the training's (batch-size-weighted mean of batch losses over
    sequential batches of ``batch_size``, batch gain and object support included); a constant
    object c gives every pattern the same |F(c·P)| up to the gain, and the loss is convex in |c|,
    so a bounded scalar search finds the minimum."""
    x = jnp.asarray(test_diffraction, jnp.float32)
    n = x.shape[0]
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    xb = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(steps, batch_size, *x.shape[1:])
    mask = (jnp.arange(steps * batch_size) < n).astype(jnp.float32).reshape(steps, batch_size)
    probe = jnp.asarray(probe, jnp.complex64)

    @jax.jit
    def val_loss(c):
        def batch(xi, m):
            obj = jnp.full((batch_size, *x.shape[1:]), c, jnp.complex64)
            amp = physics.predicted_amplitude(obj, probe, physics.batch_gain(m, physics_cfg.batch_gain),
                                              physics_cfg.object_support)
            return physics.loss_terms(amp, xi, m, physics_cfg.loss)

        losses = jax.vmap(batch)(xb, mask)
        counts = mask.sum(axis=1)
        return jnp.sum(losses * counts) / jnp.sum(counts)

    # Bracket: the amplitude at which a constant's mean prediction matches the mean measurement.
    unit = float(jnp.mean(physics.predicted_amplitude(jnp.ones((1, *x.shape[1:]), jnp.complex64), probe,
                                                      1.0, physics_cfg.object_support)))
    gain = batch_size if physics_cfg.batch_gain == "upstream" else 1.0
    guess = float(jnp.mean(x)) / max(unit * gain, 1e-30)
    found = optimize.minimize_scalar(lambda c: float(val_loss(c)), bounds=(0.0, 20 * guess),
                                     method="bounded", options={"xatol": guess * 1e-6})
    return {"plateau": float(found.fun), "amplitude": float(found.x)}


def trailing_median(finite: np.ndarray) -> np.ndarray:
    """Per step k the median of steps k−100 … k−1 (fewer at the start; NaN at step 0)."""
    padded = np.concatenate([np.full(BEHIND, np.nan), finite])
    windows = sliding_window_view(padded, BEHIND)[:finite.size]
    medians = np.median(windows, axis=1)  # the same value as nanmedian where a window is all finite, faster
    gaps = np.isnan(medians)
    with warnings.catch_warnings():  # an all-NaN window (a stopped run's tail) has no median
        warnings.simplefilter("ignore", RuntimeWarning)
        medians[gaps] = np.nanmedian(windows[gaps], axis=1)
    return medians


def lowest_trailing_median(step_loss: Sequence[float], since: int, until: int | None = None) -> float | None:
    """How far a run had descended: the lowest trailing median (as in an event's
    ``trailing_median``) over windows from step ``since`` on (the first step after epoch 1, or
    after a branch point), up to the one just before step ``until`` (its first divergence event)
    or its end: two recipes compared at their events need to have reached that level."""
    finite = np.asarray(step_loss, np.float64)
    finite = np.where(np.isfinite(finite), finite, np.nan)
    window = trailing_median(finite)[since + BEHIND:finite.size if until is None else until + 1]
    return float(np.nanmin(window)) if window.size and np.isfinite(window).any() else None


def divergence_events(step_loss: Sequence[float], grad_norm: Sequence[float],
                      epoch_steps: Sequence[int]) -> tuple[list[dict], list[dict]]:
    """Sustained departures of the training loss (events) and isolated spikes.

    A step k after the first epoch qualifies when the median loss of steps k … k+9 exceeds 3 ×
    the median of steps k−100 … k−1 (fewer where the run has fewer); consecutive qualifying
    steps are one event, which records its first step, epoch, and the peak loss and pre-clip
    gradient norm of its next 100 steps. A spike is one step above 10 × the trailing median
    that lies in no event's qualifying span. Non-finite losses are left out of the medians."""
    loss = np.asarray(step_loss, np.float64)
    grad = np.asarray(grad_norm, np.float64)
    n, first = loss.size, int(epoch_steps[0]) if len(epoch_steps) else 0
    if n < AHEAD + 1 or first >= n:
        return [], []
    finite = np.where(np.isfinite(loss), loss, np.nan)
    behind = trailing_median(finite)
    with warnings.catch_warnings():  # an all-NaN window (a stopped run's tail) has no median
        warnings.simplefilter("ignore", RuntimeWarning)
        ahead = np.nanmedian(sliding_window_view(finite, AHEAD), axis=1)       # steps k..k+9
    k = np.arange(n)
    qualifies = np.zeros(n, bool)
    last = n - AHEAD + 1
    qualifies[:last] = (k[:last] >= max(first, 1)) & (ahead > DIVERGENCE_RATIO * behind[:last])
    starts = np.flatnonzero(qualifies & ~np.concatenate([[False], qualifies[:-1]]))
    bounds = np.cumsum(epoch_steps)
    events, covered = [], np.zeros(n, bool)
    for s in starts:
        end = s
        while end + 1 < n and qualifies[end + 1]:
            end += 1
        covered[s:end + AHEAD] = True
        window = slice(s, min(s + PEAK_WINDOW, n))
        events.append({"step": int(s), "epoch": int(np.searchsorted(bounds, s, side="right")),
                       "qualifying_steps": int(end - s + 1),
                       "trailing_median": float(behind[s]),
                       "peak_loss": float(np.nanmax(finite[window])),
                       "peak_grad_norm": float(np.nanmax(np.where(np.isfinite(grad[window]), grad[window], np.nan)))})
    spike = (k >= max(first, 1)) & (finite > SPIKE_RATIO * behind) & ~covered
    spikes = [{"step": int(s), "epoch": int(np.searchsorted(bounds, s, side="right")),
               "loss": float(finite[s]), "trailing_median": float(behind[s])} for s in np.flatnonzero(spike)]
    return events, spikes


# --- the outcome --------------------------------------------------------------------------------

def classify(best: float, final: float, plateau: float, contrast: float | None, diverged: bool,
             non_finite: bool) -> str:
    """The first outcome of SPEC §6.3 that applies."""
    if non_finite or not (np.isfinite(best) and np.isfinite(final)):
        return "non_finite"
    fell_back = final >= best + FALLBACK * (plateau - best)
    learned = best <= LEARNED_RATIO * plateau
    if contrast is not None and contrast < CONSTANT_CONTRAST and fell_back and learned:
        return "collapsed_constant"
    if diverged:
        return "diverged" if fell_back else "diverged_recovered"
    return "never_learned" if not learned else "healthy"


def judge(history: Mapping[str, Any], plateau: float, contrast: float | None) -> dict:
    """The outcome of a run from its history, its data's plateau and its final contrast.

    Uses ``val_loss`` per epoch, ``step_loss``/``grad_norm`` per step, ``epoch_steps`` (or
    ``steps_per_epoch``), ``nonfinite_step``; with ``val_loss_scale_free`` (runs from 2026-12-03
    on) the outcome is judged again on it and ``scale_sensitive`` says whether it changed (None
    where the history predates it). ``time_to_divergence`` is the survival variable of SPEC §7.2:
    the first event's step, or the run's last step, censored."""
    val = np.asarray(history.get("val_loss", []), np.float64)
    steps = epoch_steps(history) if history.get("steps_per_epoch") or history.get("epoch_steps") else []
    events, spikes = divergence_events(history.get("step_loss", []), history.get("grad_norm", []), steps)
    non_finite = history.get("nonfinite_step") is not None or not np.all(np.isfinite(val))
    finite_val = val[np.isfinite(val)]
    best = float(finite_val.min()) if finite_val.size else float("nan")
    final = float(val[-1]) if val.size else float("nan")
    outcome = classify(best, final, plateau, contrast, bool(events), non_finite)
    scale_free = history.get("val_loss_scale_free") or []
    outcome_sf = None
    if len(scale_free) == len(val) > 0:  # a resumed pre-2026-12-03 history has it only in part
        sf = np.asarray(scale_free, np.float64)
        sf_finite = sf[np.isfinite(sf)]
        outcome_sf = classify(float(sf_finite.min()) if sf_finite.size else float("nan"), float(sf[-1]),
                              plateau, contrast, bool(events), non_finite)
    n_steps = len(history.get("step_loss", []))
    return {
        "outcome": outcome,
        "collapse": outcome in COLLAPSE_OUTCOMES,
        "outcome_scale_free": outcome_sf,
        "scale_sensitive": None if outcome_sf is None else outcome_sf != outcome,
        "plateau": plateau,
        "contrast": contrast,
        "best_val_loss": best,
        "final_val_loss": final,
        "fallback_line": best + FALLBACK * (plateau - best),
        "events": events,
        "spikes": {"count": len(spikes), "first": spikes[:10]},
        "time_to_divergence": {"step": events[0]["step"] if events else max(n_steps - 1, 0),
                               "observed": bool(events), "epoch": events[0]["epoch"] if events else None},
    }
