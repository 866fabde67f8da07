"""Figures of one run. Matplotlib with the non-interactive Agg backend, written atomically."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfno.io import atomic_path  # noqa: E402
from jaxfno.training.loop import epoch_steps  # noqa: E402


def format_value(value: float | None, digits: int = 4) -> str:
    """A metric for a table or a title; "n/a" where it has no value (a non-finite prediction
    scores None)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def save_figure(fig, path: pathlib.Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def reconstruction_figure(prediction: np.ndarray, ground_truth: np.ndarray, title: str = ""):
    """Amplitude and phase of the stitched prediction next to the ground truth."""
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 7))
    panels = [
        (np.abs(ground_truth), "ground truth |O|"), (np.abs(prediction), "prediction |O|"),
        (np.angle(ground_truth), "ground truth arg O"), (np.angle(prediction), "prediction arg O"),
    ]
    for ax, (image, label) in zip(axes.flat, panels):
        shown = ax.imshow(image, cmap="gray" if "|" in label else "twilight")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def runs_figure(histories: dict[str, dict], from_epoch: int = 1):
    """Runs side by side from epoch ``from_epoch`` (1-based) on: per-step training loss and
    pre-clip gradient norm, and per-epoch val_loss, against the global step (a branch and its
    source line up: their histories share the steps before the branch point). Dotted
    vertical lines mark the epochs of the first run."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for label, h in histories.items():
        per_epoch = epoch_steps(h)  # a branch's epochs may differ in step count
        first = int(sum(per_epoch[: from_epoch - 1]))
        steps = np.arange(first, len(h["step_loss"]))
        axes[0].plot(steps + 1, h["step_loss"][first:], lw=0.8, label=label)
        axes[1].plot(steps + 1, h["grad_norm"][first:], lw=0.8, label=label)
        ends = np.cumsum(per_epoch)[from_epoch - 1:]
        axes[2].plot(ends, h["val_loss"][from_epoch - 1:], "o-", ms=3, lw=1, label=label)
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

