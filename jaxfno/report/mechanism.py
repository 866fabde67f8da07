"""What the short last batch does to each epoch's first steps, and where the divergences start
relative to it: the "why" read from finished runs' per-step histories.

Each epoch ends with the short batch when the training set is not a multiple of the batch size
and ``drop_last`` is off; with upstream's batch gain its loss is ~8x a full batch's. The table
compares the gradient norms of the first ``WINDOW`` steps after it with the rest of the epoch,
counts the steps a clip at ``CLIP`` would change, and places each run's first divergence event.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxfno.config import RunConfig
from jaxfno.data.simulate import n_positions
from jaxfno.evaluation.outcomes import AHEAD, epoch_steps
from jaxfno.pipeline import RunResult
from jaxfno.report.cells import load_run

WINDOW = 25  # steps after an epoch boundary counted as "just after the short batch"
CLIP = 0.5  # the seed's clipping threshold (SPEC §7's stable_warmup_clip)


def short_batch(cfg: RunConfig) -> bool:
    """Whether each epoch of a run with this config ends with a short batch."""
    n_train = cfg.train.train_subset or n_positions(cfg.data.train_stride) ** 2 * cfg.data.nimgs_train
    return n_train % cfg.train.batch_size != 0 and not cfg.train.drop_last


def kick_row(result: RunResult) -> dict:
    """Per-run statistics over epochs 2.. (epoch 1 is the descent from the initialisation)."""
    h, cfg = result.history, result.config
    loss, grad = np.asarray(h["step_loss"], float), np.asarray(h["grad_norm"], float)
    steps = np.asarray(epoch_steps(h))
    starts = np.concatenate([[0], np.cumsum(steps)[:-1]])
    short = short_batch(cfg)
    after, rest = [], []
    events = result.verdict.get("outcome_details", {}).get("events", [])
    first = events[0]["step"] if events else None
    for s, n in zip(starts[1:], steps[1:]):
        end = s + n - (1 if short else 0)  # the short batch itself is neither
        if first is not None:  # after a divergence the statistics describe the divergence, not the kick
            end = min(end, first)
        after += list(grad[s:min(s + WINDOW, end)])
        rest += list(grad[s + WINDOW:end])
    ends = (starts + steps - 1)[1:]
    before = [g for g in (grad[:first] if first is not None else grad)[int(steps[0]):] if np.isfinite(g)]
    since = None
    if first is not None:
        # the epoch start that the event's look-ahead window reaches: an event flagged a few steps
        # before a short batch (its window holds the kick and the steps after it) counts as negative
        boundary = starts[np.searchsorted(starts, first + AHEAD - 1, side="right") - 1]
        since = int(first - boundary)
    return {
        "run": str(result.run_dir), "seed": cfg.train.seed, "outcome": result.verdict.get("outcome", "?"),
        "short": short, "gain": cfg.physics.batch_gain,
        "short_grad": float(np.median(grad[ends])) if short else None,
        "short_loss": float(np.median(loss[ends])) if short else None,
        "after": float(np.median(after)) if after else None, "rest": float(np.median(rest)) if rest else None,
        "clipped": float(np.mean(np.asarray(before) > CLIP)) if before else None,
        "first_event": first, "steps_after_boundary": since, "epoch_steps": int(steps[0]),
    }


def _f(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def kick_section(run_dirs: list[pathlib.Path], base: pathlib.Path) -> list[str]:
    runs = [d for d in run_dirs if (d / "verdict.json").exists()]
    lines = ["## 6. The short batch's kick and where the divergences start (full scale)", ""]
    if not runs:
        return lines + ["No finished runs yet.", ""]
    lines += [f"Per finished run (epochs 2 on, up to its first divergence event): the median gradient norm of the "
              f"short last batch, of the first {WINDOW} steps after it (the next epoch's start) and of the rest "
              f"of the epoch; the share of steps whose gradient norm exceeds {CLIP} (where the seed question's clip, part of `stable_warmup_clip`, "
              "at 0.5 acts: above 0.5 on nearly every step it rescales every gradient, so Adam sees "
              "unit-norm gradients and the short batch loses its extra weight); and the first divergence "
              "event's position after the last epoch boundary (`jaxfno/report/mechanism.py`).", "",
              "| run | outcome | batch gain | short batch: loss, grad norm | grad norm, first "
              f"{WINDOW} steps of an epoch | grad norm, rest | steps with grad norm > {CLIP} | first divergence "
              "event (steps after the epoch's start) |",
              "|---|---|---|---|---|---|---|---|"]
    for run_dir in runs:
        r = kick_row(load_run(run_dir))
        name = pathlib.Path(r["run"]).relative_to(base) if pathlib.Path(r["run"]).is_relative_to(base) else r["run"]
        short = f"{_f(r['short_loss'])}, {_f(r['short_grad'])}" if r["short"] else "no short batch"
        event = "–" if r["first_event"] is None else f"step {r['first_event']} ({r['steps_after_boundary']})"
        clipped = "–" if r["clipped"] is None else f"{100 * r['clipped']:.0f} %"
        lines.append(f"| {name} | {r['outcome']} | {r['gain']} | {short} | {_f(r['after'])} | {_f(r['rest'])} | "
                     f"{clipped} | {event} |")
    return lines + [""]


def early_start_p(events: list[tuple[int, int]], lead: int = AHEAD - 1) -> tuple[int, float]:
    """(positions, p) for events given as (steps after the epoch's start, down to ``-lead``; the
    epoch's steps): the chance that every event starts within the first ``positions`` of the
    epoch's steps counted from ``lead`` steps before its start, were the starts uniform over them
    (a one-sided test of the largest position)."""
    positions = max(since for since, _ in events) + lead + 1
    return positions, float(np.prod([min(1.0, positions / n) for _, n in events]))


def kick_sentence(run_dirs: list[pathlib.Path]) -> str | None:
    """The section's reading for the answer paragraph, from the same rows."""
    rows = [kick_row(load_run(d)) for d in run_dirs if (d / "verdict.json").exists()]
    gain = [r for r in rows if r["gain"] != "none" and r["short"] and r["rest"]]
    plain = [r for r in rows if r["gain"] == "none" and r["rest"]]
    events = [(r["steps_after_boundary"], r["epoch_steps"]) for r in rows if r["first_event"] is not None]
    if not gain or not plain:
        return None
    med = lambda key, rs: float(np.median([r[key] for r in rs]))  # noqa: E731
    text = (f"Why, as far as the histories show (section 6): upstream's batch gain makes the gradients "
            f"{med('rest', gain) / med('rest', plain):.1f}x larger than without it (median norm {med('rest', gain):.3g} "
            f"against {med('rest', plain):.3g}) and the short last batch a kick ({med('short_grad', gain):.3g}) after "
            f"which each epoch's first {WINDOW} steps run at {med('after', gain):.3g}; with the gain, the seed question's clip at "
            f"norm {CLIP} would rescale {100 * med('clipped', gain):.0f} % of all steps after epoch 1, so Adam would see "
            "gradients of one norm and the short batch would lose its extra weight.")
    if events:
        where = ", ".join(f"{since} of {n}" for since, n in events)
        positions, p = early_start_p(events)
        text += (f" `stable`'s first divergence events began {where} steps into their epoch (counted from the "
                 f"start of the epoch that the event's {AHEAD}-step look-ahead reaches, so an event flagged a few "
                 f"steps before the short batch its window holds is negative): were the starts uniform over the epoch's steps, all "
                 f"{len(events)} would lie within the first {positions} (from {AHEAD - 1} steps before the epoch's "
                 f"start) with probability {p:.2g} (a post-hoc test of the latest start).")
    return text
