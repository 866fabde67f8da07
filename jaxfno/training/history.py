"""A run's history (the schema of ``history.json``), the member that owns it, and recording
one epoch into it."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np

from jaxfno.config import RunConfig
from jaxfno.evaluation import score
from jaxfno.evaluation.outcomes import amplitude_contrast, epoch_steps
from jaxfno.training.optim import LRSchedule


def new_history() -> dict:
    return {
        "train_loss": [], "val_loss": [], "lr_epoch": [],
        "lr": [], "step_loss": [], "grad_norm": [], "grad_norm_postclip": [],
        "val_amp_ssim": [], "val_loss_scale_free": [], "val_contrast": [],
        "epoch_seconds": [], "train_seconds": [],
        "nonfinite_step": None, "nonfinite_epoch": None, "steps_per_epoch": None, "epoch_steps": [],
        "diagnostics": {"clipped_fraction": [], "blocks": {}},
        # Wall time outside the epochs (seconds, the last process that worked on the run):
        # setup (data to device, init, resume), waiting for checkpoint writes at the end,
        # and the final evaluation (pipeline).
        "timing": {},
        # How the program ran: device kind and count, commit, execution choices.
        "execution": {},  # see jaxfno.execution.ExecutionConfig.record
    }


@dataclasses.dataclass
class Member:
    config: RunConfig
    run_dir: pathlib.Path
    history: dict = dataclasses.field(default_factory=new_history)
    schedule: LRSchedule | None = None
    best_val: float = math.inf

    def __post_init__(self):
        if self.schedule is None:
            self.schedule = LRSchedule(self.config.optim, self.config.train.epochs)

    @property
    def stopped(self) -> bool:
        return self.history["nonfinite_step"] is not None

    def meta(self, epoch: int) -> dict:
        return {
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "epoch": epoch,
            "val_loss": self.history["val_loss"][-1],
            "history": self.history,
            "schedule": self.schedule.to_dict(),
            "best_val": self.best_val,
        }


def record_epoch(m: Member, k: int, epoch: int, logs: dict, val_losses: tuple[float, float], lr: float,
                  diagnostics: dict, stitched: np.ndarray, ground_truth,
                  seconds: tuple[float, float]) -> None:
    h = m.history
    loss = logs["loss"][:, k].astype(np.float64)
    steps = loss.size
    n_valid = logs["n_valid"][:, k].astype(np.float64)
    finite = logs["finite"][:, k].astype(bool)
    pre = logs["grad_norm"][:, k].astype(np.float64)
    post = logs["grad_norm_postclip"][:, k].astype(np.float64)
    h["epoch_steps"] = epoch_steps(h) + [steps]
    h["steps_per_epoch"] = steps
    h["lr"] += logs["lr"][:, k].astype(np.float64).tolist()
    h["step_loss"] += loss.tolist()
    h["grad_norm"] += pre.tolist()
    h["grad_norm_postclip"] += post.tolist()
    if not finite.all():  # a global step index: a branch's epochs may differ in step count
        h["nonfinite_step"] = len(h["step_loss"]) - steps + int(np.argmin(finite))
        h["nonfinite_epoch"] = epoch
    ok = finite
    h["train_loss"].append(float(np.sum(loss[ok] * n_valid[ok]) / max(np.sum(n_valid[ok]), 1)))
    h["val_loss"].append(val_losses[0])
    # Histories written before 2026-12-03 lack these two (a resumed one has them from here on).
    h.setdefault("val_loss_scale_free", []).append(val_losses[1])
    h.setdefault("val_contrast", []).append(amplitude_contrast(stitched, ground_truth))
    h["lr_epoch"].append(lr)
    h["epoch_seconds"].append(seconds[0])  # the whole epoch, shared by the program's members
    h["train_seconds"].append(seconds[1])  # its training steps only
    h["val_amp_ssim"].append(score(stitched, ground_truth)["ssim"][0])
    # A step counts as clipped when clipping changed its gradient (any algorithm).
    h["diagnostics"]["clipped_fraction"].append(float(np.mean(post < pre * (1 - 1e-6))))
    for block, stats in diagnostics.items():
        per_block = h["diagnostics"]["blocks"].setdefault(block, {})
        for name, value in stats.items():
            per_block.setdefault(name, []).append(None if value is None else float(value[k]))
