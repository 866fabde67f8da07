"""Runs side by side, e.g. a branch and its source (``jaxfno compare``): a markdown table of
their outcomes and a figure of their per-step training loss and gradient norm."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfno.io import read_json  # noqa: E402
from jaxfno.evaluation.outcomes import epoch_steps  # noqa: E402


def load_histories(run_dirs: list[pathlib.Path], labels: list[str]) -> dict[str, dict]:
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    histories = {}
    for label, run_dir in zip(labels, run_dirs):
        if not (run_dir / "history.json").exists():
            raise FileNotFoundError(f"{run_dir}: no history.json (not a run directory)")
        histories[label] = read_json(run_dir / "history.json")
    return histories


def _first_step(history: dict, from_epoch: int) -> int:
    """Global index of the first step of ``from_epoch`` (1-based); a branch's epochs may differ
    in step count."""
    if not 1 <= from_epoch <= len(history["val_loss"]):
        raise ValueError(f"from epoch {from_epoch}: the run has {len(history['val_loss'])} epochs")
    return int(sum(epoch_steps(history)[: from_epoch - 1]))


def compare_table(run_dirs: list[pathlib.Path], histories: dict[str, dict], from_epoch: int) -> str:
    """One row per run: epochs, best val_loss (its epoch), final val_loss, the largest step loss
    and pre-clip gradient norm from ``from_epoch`` on, and the verdict (or "unfinished")."""
    lines = [f"| run | epochs | best val_loss (epoch) | final val_loss | max step loss from epoch "
             f"{from_epoch} | max grad norm from epoch {from_epoch} | verdict |",
             "|---|---|---|---|---|---|---|"]
    for run_dir, (label, h) in zip(run_dirs, histories.items()):
        first = _first_step(h, from_epoch)
        val = np.asarray(h["val_loss"], float)
        verdict_file = run_dir / "verdict.json"
        if not verdict_file.exists():
            state = "unfinished"
        else:
            verdict = read_json(verdict_file)
            state = "collapsed: " + ", ".join(verdict["rules"]) if verdict["collapsed"] else "no collapse"
        lines.append(f"| {label} | {val.size} | {val.min():.4f} ({int(val.argmin()) + 1}) | "
                     f"{val[-1]:.4f} | {max(h['step_loss'][first:]):.4g} | "
                     f"{max(h['grad_norm'][first:]):.4g} | {state} |")
    return "\n".join(lines) + "\n"


def compare_figure(histories: dict[str, dict], from_epoch: int = 1, groups: list[str] | None = None):
    """Per-step training loss and pre-clip gradient norm, and per-epoch val_loss, from epoch
    ``from_epoch`` on, against the global step (a branch and its source line up: they share the
    steps before the branch point). Dotted lines mark the epoch ends of the longest run. With
    ``groups`` (one name per run), the runs of a group share a colour and one legend entry, so
    that several branches per change stay readable."""
    if groups is not None and len(groups) != len(histories):
        raise ValueError(f"{len(groups)} groups for {len(histories)} runs")
    names = list(histories) if groups is None else groups
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(names))}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    shown = set()
    for name, h in zip(names, histories.values()):
        first = _first_step(h, from_epoch)
        steps = np.arange(first, len(h["step_loss"])) + 1
        style = {"color": colours[name], "label": None if name in shown else name}
        shown.add(name)
        axes[0].plot(steps, h["step_loss"][first:], lw=0.8, **style)
        axes[1].plot(steps, h["grad_norm"][first:], lw=0.8, **style)
        ends = np.cumsum(epoch_steps(h))[from_epoch - 1:]
        axes[2].plot(ends, h["val_loss"][from_epoch - 1:], "o-", ms=3, lw=1, **style)
    longest = max(histories.values(), key=lambda h: len(h["val_loss"]))
    for ax, name in zip(axes, ("training loss per step", "grad norm per step (pre-clip)",
                               "val_loss at each epoch's end")):
        for end in np.cumsum(epoch_steps(longest))[from_epoch - 1:]:
            ax.axvline(end, color="0.7", lw=0.5, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("global step")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig
