"""A table of finished runs' outcomes (SPEC §6.3), written from their files.

Steps are global 0-based indices into ``history.json``'s per-step lists (``step_loss[k]``);
epochs are shown 1-based ("epoch e of E"). The short last batch is each epoch's last step
(present when the training set is not a multiple of the batch size and ``drop_last`` is off).
"""

from __future__ import annotations

import pathlib
from typing import Iterable

import numpy as np

from jaxfno.data.simulate import n_positions
from jaxfno.evaluation.outcomes import epoch_steps
from jaxfno.pipeline import RunResult
from jaxfno.report.cells import load_run


def finished_run_dirs(roots: Iterable[pathlib.Path]) -> list[pathlib.Path]:
    """Every directory below ``roots`` (or a root itself) that holds a finished run."""
    found = []
    for root in map(pathlib.Path, roots):
        found += [v.parent for v in sorted(root.rglob("verdict.json"))]
    return found


def _range(values: np.ndarray) -> str:
    return f"{values.min():.3g}–{values.max():.3g}" if values.size else "–"


def run_row(result: RunResult) -> dict:
    """One run's outcome and the step statistics the results READMEs quote."""
    h, v = result.history, result.verdict
    d = v["outcome_details"]
    loss, grad = np.asarray(h["step_loss"], float), np.asarray(h["grad_norm"], float)
    steps = np.asarray(epoch_steps(h))
    ends = np.cumsum(steps) - 1
    cfg = result.config
    n_train = cfg.train.train_subset or n_positions(cfg.data.train_stride) ** 2 * cfg.data.nimgs_train
    short = n_train % cfg.train.batch_size != 0 and not cfg.train.drop_last
    first = d["events"][0] if d["events"] else None
    after_first = slice(int(steps[0]), None)
    return {
        "run": str(result.run_dir),
        "seed": cfg.train.seed,
        "epochs": len(h["val_loss"]),
        "outcome": v["outcome"],
        "scale_sensitive": d["scale_sensitive"],
        "rules_6_1": ", ".join(v["rules"]) or "none",
        "best_val": d["best_val_loss"], "best_epoch": int(np.nanargmin(h["val_loss"])) + 1,
        "final_val": d["final_val_loss"], "plateau": d["plateau"], "contrast": d["contrast"],
        "first_event": None if first is None else
        f"step {first['step']} (epoch {first['epoch'] + 1}), peak loss {first['peak_loss']:.3g}, "
        f"peak grad {first['peak_grad_norm']:.3g}",
        "spikes": d["spikes"]["count"],
        "short_batch_loss": _range(loss[ends]) if short else "no short batch",
        "short_batch_grad": _range(grad[ends]) if short else "–",
        "max_loss_after_epoch_1": float(np.nanmax(loss[after_first])) if loss[after_first].size else None,
        "max_grad_after_epoch_1": float(np.nanmax(grad[after_first])) if grad[after_first].size else None,
    }


def runs_markdown(run_dirs: Iterable[pathlib.Path], base: pathlib.Path | None = None) -> str:
    """The Markdown table of :func:`run_row` for each run (paths relative to ``base``)."""
    lines = ["| run | seed | epochs | outcome (§6.3) | §6.1 rules | best val (epoch) | final val | plateau | "
             "final contrast | first divergence event | spikes | short batch loss | short batch grad norm | "
             "max step loss after epoch 1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run_dir in run_dirs:
        r = run_row(load_run(run_dir))
        name = str(pathlib.Path(r["run"]).relative_to(base)) if base else r["run"]
        sensitive = " (scale-sensitive)" if r["scale_sensitive"] else ""
        lines.append(
            f"| {name} | {r['seed']} | {r['epochs']} | {r['outcome']}{sensitive} | {r['rules_6_1']} | "
            f"{r['best_val']:.4f} ({r['best_epoch']}) | {r['final_val']:.4f} | {r['plateau']:.4f} | "
            f"{r['contrast']:.3f} | {r['first_event'] or '–'} | {r['spikes']} | {r['short_batch_loss']} | "
            f"{r['short_batch_grad']} | {r['max_loss_after_epoch_1']:.3g} |")
    lines += ["", "Steps: global 0-based indices into `history.json`'s `step_loss`; epochs 1-based. "
              "Outcome: SPEC §6.3 (plateau: the best constant object's val_loss; contrast: the stitched "
              "amplitude's std/mean over the ground truth's). Short batch: each epoch's last step."]
    return "\n".join(lines) + "\n"
