"""The collapse verdict and the success criterion (SPEC §6).

Epochs are 0-based indices into the per-epoch history lists.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .metrics import score

FLOOR_SSIM_MARGIN = 0.02
MIN_AMPLITUDE_CV = 1e-3
COLLAPSE_LOSS_RATIO = 3.0
SUCCESS_AMP_SSIM = 0.80
SUCCESS_AMP_MAE = 0.15


def _first_nonfinite_epoch(history: Mapping[str, Any]) -> int | None:
    epochs = [e for key in ("train_loss", "val_loss")
              for e, v in enumerate(history.get(key, [])) if not np.isfinite(v)]
    return min(epochs, default=None)


def collapse_verdict(history: Mapping[str, Any], stitched_prediction, ground_truth,
                     floor: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> dict:
    """Decide whether a run collapsed; every rule is checked and all that fired are recorded.

    ``history``: ``train_loss`` and ``val_loss`` (one value per epoch), optionally
    ``nonfinite_step`` (first optimiser step with a non-finite loss, gradient or parameter, or
    None), ``nonfinite_epoch`` (its epoch) or else ``steps_per_epoch`` (to place that step in
    an epoch; histories written before ``nonfinite_epoch`` existed). ``stitched_prediction`` and
    ``ground_truth``: complex 330² arrays; ``floor``: :func:`constant_floor` of that ground
    truth; ``metrics``: :func:`score` of the prediction (computed when not given).

    Rules, in order:

    - ``non_finite``: ``nonfinite_step`` is set, a recorded loss is non-finite, or the stitched
      prediction is. Epoch: ``nonfinite_epoch``, else ``nonfinite_step // steps_per_epoch``, else
      the first non-finite loss epoch, else the number of completed epochs (the one in
      progress).
    - ``constant_output``: amp SSIM within 0.02 of the floor's amp SSIM, or std/mean of the
      stitched amplitude (full 330²) below 1e-3 (an all-zero output counts). Seen in the
      final weights. Epoch: where the history's per-epoch validation amp SSIM
      (``val_amp_ssim``) has it, the first of the epochs that stay within the margin through
      the last; else the last epoch.
    - ``learns_then_collapses``: final val_loss > 3 × best val_loss. Epoch: the first epoch
      after the best one whose val_loss exceeds 3 × best.

    Returns ``{"collapsed", "rules", "details", "epoch", "measured"}``: ``details`` maps each
    fired rule to a dict with a human-readable ``message`` and its numbers; ``epoch`` is the
    earliest epoch any fired rule points at (None when nothing fired); ``measured`` holds the
    quantities every rule looked at, fired or not. All values are JSON-serialisable.
    """
    metrics = score(stitched_prediction, ground_truth) if metrics is None else metrics
    val = [float(v) for v in history.get("val_loss", [])]
    n_epochs = max(len(val), len(history.get("train_loss", [])))
    amplitude = np.abs(np.asarray(stitched_prediction))
    amp_mean, amp_std = float(amplitude.mean()), float(amplitude.std())
    amp_ssim, floor_ssim = metrics["ssim"][0], floor["ssim"][0]
    finite_val = [v for v in val if np.isfinite(v)]
    best = min(finite_val, default=None)
    measured = {"amp_ssim": amp_ssim, "floor_amp_ssim": floor_ssim,
                "amp_mean": amp_mean, "amp_std": amp_std, "best_val_loss": best,
                "final_val_loss": val[-1] if val else None}
    details: dict[str, dict] = {}
    epochs: dict[str, int | None] = {}

    step = history.get("nonfinite_step")
    bad_epoch = _first_nonfinite_epoch(history)
    finite_prediction = bool(np.all(np.isfinite(amplitude)))
    if step is not None or bad_epoch is not None or not finite_prediction:
        per_epoch = history.get("steps_per_epoch")
        if history.get("nonfinite_epoch") is not None:
            epochs["non_finite"] = int(history["nonfinite_epoch"])
        elif step is not None and per_epoch:
            epochs["non_finite"] = int(step) // int(per_epoch)
        else:
            epochs["non_finite"] = bad_epoch if bad_epoch is not None else n_epochs
        where = [f"non-finite at step {int(step)}"] if step is not None else []
        if bad_epoch is not None:
            where.append(f"non-finite loss at epoch {bad_epoch}")
        if not finite_prediction:
            where.append("non-finite stitched prediction")
        details["non_finite"] = {"message": "; ".join(where),
                                 "step": None if step is None else int(step),
                                 "epoch": epochs["non_finite"]}

    near_floor = _near_floor(amp_ssim, floor_ssim)
    flat = finite_prediction and (amp_std == 0 or amp_std < MIN_AMPLITUDE_CV * amp_mean)
    if near_floor or flat:
        reasons = []
        if near_floor:
            reasons.append(f"amp SSIM {amp_ssim:.4f} within {FLOOR_SSIM_MARGIN} of the "
                           f"constant-prediction floor {floor_ssim:.4f}")
        if flat:
            cv = amp_std / amp_mean if amp_mean else 0.0
            reasons.append(f"stitched amplitude std/mean {cv:.2e} < {MIN_AMPLITUDE_CV}")
        onset = _floor_onset(history.get("val_amp_ssim") or [], floor_ssim) if near_floor else None
        epochs["constant_output"] = max(n_epochs - 1, 0) if onset is None else onset
        details["constant_output"] = {"message": "constant output: " + "; ".join(reasons),
                                      "near_floor": near_floor, "flat": flat,
                                      "epoch": epochs["constant_output"]}

    if best is not None and np.isfinite(val[-1]) and val[-1] > COLLAPSE_LOSS_RATIO * best:
        best_epoch = val.index(best)
        onset = next(e for e in range(best_epoch + 1, len(val))
                     if val[e] > COLLAPSE_LOSS_RATIO * best)
        epochs["learns_then_collapses"] = onset
        details["learns_then_collapses"] = {
            "message": (f"final val_loss {val[-1]:.4g} > {COLLAPSE_LOSS_RATIO:g} x best "
                        f"{best:.4g} (epoch {best_epoch}); first above at epoch {onset}"),
            "best_epoch": best_epoch, "best_val_loss": best, "onset_epoch": onset,
            "final_val_loss": val[-1]}

    rules = list(details)
    return {"collapsed": bool(rules), "rules": rules, "details": details,
            "epoch": min(epochs.values(), default=None), "measured": measured}


def _near_floor(amp_ssim: float | None, floor_ssim: float) -> bool:
    return amp_ssim is not None and abs(amp_ssim - floor_ssim) <= FLOOR_SSIM_MARGIN


def _floor_onset(amp_ssims: list, floor_ssim: float) -> int | None:
    """First epoch of the final run of epochs whose amp SSIM is within the margin of the floor
    (None when the last epoch's is not)."""
    onset = None
    for epoch in range(len(amp_ssims) - 1, -1, -1):
        if not _near_floor(amp_ssims[epoch], floor_ssim):
            break
        onset = epoch
    return onset


def below_floor(amp_ssim: float | None, floor_amp_ssim: float) -> bool:
    """Amp SSIM more than the margin below the constant-prediction floor: worse than predicting
    a constant. Not a SPEC §6 rule (``constant_output`` fires only within the margin)."""
    return amp_ssim is not None and amp_ssim < floor_amp_ssim - FLOOR_SSIM_MARGIN


def meets_success(metrics: Mapping[str, Any], verdict: Mapping[str, Any]) -> bool:
    """SPEC §6 success: amp SSIM ≥ 0.80, amp MAE ≤ 0.15 and no collapse verdict. The SPEC's
    "no collapse after epoch 7" is read as no verdict at all: the verdict judges the final
    state, and a non-finite step at any epoch stops the run short of its epochs."""
    amp_ssim, amp_mae = metrics["ssim"][0], metrics["mae"][0]
    return (not verdict["collapsed"] and amp_ssim is not None and amp_mae is not None
            and amp_ssim >= SUCCESS_AMP_SSIM and amp_mae <= SUCCESS_AMP_MAE)
