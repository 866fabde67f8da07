"""Figures of one run. Matplotlib with the non-interactive Agg backend, written atomically."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfno.io import atomic_path  # noqa: E402


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
