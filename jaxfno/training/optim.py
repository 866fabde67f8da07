"""Optimiser, gradient clipping and the per-epoch learning-rate schedule (SPEC §4).

The update is ``optax.chain(clip, optimiser)`` written out as two transforms so that the step
can log the global gradient norm both before and after clipping. Both carry their knob as an
injected hyperparameter (``optax.inject_hyperparams``): the learning rate and the clip
threshold live in the optimiser state, so

* the LR actually applied is read back from the state at every step (a test compares it with
  the schedule; upstream's schedules silently never reached the model, SPEC §9.3), and
* runs that differ only in LR, schedule or clip threshold share one compiled program, with the
  values stacked along the member axis.

The schedule is stepped per EPOCH on the host (constant within an epoch, as upstream intended);
``plateau`` needs the validation loss, which only the host has at the end of an epoch.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from jaxfno.config import OptimConfig

NO_CLIP = float("inf")  # a threshold that never triggers: "no clipping" shares the clip code path


def clip_threshold(cfg: OptimConfig) -> float:
    return cfg.grad_clip if cfg.grad_clip > 0 else NO_CLIP


def _clip_by_tensor_norm_ratio(clipping, eps: float = 1e-3) -> optax.GradientTransformation:
    """Upstream's per-tensor AGC: rescale a gradient tensor whose norm exceeds
    ``clipping · max(‖param‖, eps)`` (unit-wise AGC is ``optax.adaptive_grad_clip``)."""

    def update_fn(updates, state, params):
        def clip(g, p):
            g_norm = jnp.linalg.norm(g)
            max_norm = clipping * jnp.maximum(jnp.linalg.norm(p), eps)
            return jnp.where(g_norm > max_norm, g * (max_norm / jnp.maximum(g_norm, 1e-12)), g)

        return jax.tree.map(clip, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


_CLIPPERS = {
    "norm": lambda threshold: optax.clip_by_global_norm(threshold),
    "value": lambda threshold: optax.clip(threshold),
    "agc": lambda threshold: optax.adaptive_grad_clip(threshold),
    "agc_tensor": _clip_by_tensor_norm_ratio,
}


def _optimizer_factory(cfg: OptimConfig):
    if cfg.optimizer == "adam":
        return lambda learning_rate: optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.optimizer == "adamw":
        return lambda learning_rate: optax.adamw(
            learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    # PyTorch semantics: Nesterov whenever momentum is used (SPEC §4).
    return lambda learning_rate: optax.sgd(
        learning_rate, momentum=cfg.momentum or None, nesterov=cfg.momentum > 0
    )


@dataclasses.dataclass(frozen=True)
class Transforms:
    """The two halves of the update rule, each with its knob injected into its state.

    ``zero_gradient_invariant``: an entry whose gradient is zero at every step keeps its value
    and optimiser state (zero moments), and the other entries' updates do not depend on it. True
    for Adam, SGD (with or without momentum) and AdamW without weight decay after global-norm or
    value clipping; false for AdamW's decoupled weight decay, which shrinks every entry, and the
    AGC clippers, which read the whole parameter's norm. Where true, the training step may
    update only the entries that can receive a gradient (see ``Engine``)."""

    clip: optax.GradientTransformation
    optimizer: optax.GradientTransformation
    zero_gradient_invariant: bool


def build_transforms(cfg: OptimConfig) -> Transforms:
    clipper = _CLIPPERS[cfg.grad_clip_algorithm]
    return Transforms(
        clip=optax.inject_hyperparams(lambda threshold: clipper(threshold))(
            threshold=clip_threshold(cfg)
        ),
        optimizer=optax.inject_hyperparams(_optimizer_factory(cfg))(learning_rate=cfg.lr),
        zero_gradient_invariant=(cfg.grad_clip_algorithm in ("norm", "value")
                                 and (cfg.optimizer != "adamw" or cfg.weight_decay == 0)),
    )


def with_hyperparam(state, name: str, value):
    """Return ``state`` (an inject_hyperparams state) with hyperparameter ``name`` replaced."""
    hyperparams = dict(state.hyperparams)
    hyperparams[name] = jnp.asarray(value, dtype=jnp.asarray(hyperparams[name]).dtype)
    return state._replace(hyperparams=hyperparams)


# --- per-epoch schedule (host side) ---------------------------------------------------------


def scheduled_lr(cfg: OptimConfig, epochs: int, epoch: int) -> float:
    """Learning rate for ``epoch`` (0-based) of the open-loop schedules; plateau starts at lr."""
    if cfg.scheduler in ("constant", "plateau"):
        return cfg.lr
    if cfg.scheduler == "asrun_warmup":
        return 0.1 * cfg.lr  # upstream's never-stepped WarmupCosine stayed at its start value
    warmup = cfg.warmup_epochs
    if epoch < warmup:
        return cfg.lr * (0.1 + 0.9 * epoch / warmup)
    lr_min = cfg.lr_min_ratio * cfg.lr
    progress = (epoch - warmup) / (epochs - warmup)
    return lr_min + (cfg.lr - lr_min) * (1 + math.cos(math.pi * progress)) / 2


@dataclasses.dataclass
class LRSchedule:
    """Host-side schedule state; ``plateau`` follows torch's ReduceLROnPlateau (mode min,
    relative threshold 1e-4, no cooldown). Serialisable for resume via ``to_dict``."""

    cfg: OptimConfig
    epochs: int
    plateau_lr: float | None = None
    plateau_best: float = math.inf
    plateau_bad_epochs: int = 0

    def lr(self, epoch: int) -> float:
        if self.cfg.scheduler == "plateau":
            return self.cfg.lr if self.plateau_lr is None else self.plateau_lr
        return scheduled_lr(self.cfg, self.epochs, epoch)

    def observe(self, epoch: int, val_loss: float) -> None:
        """Feed the epoch's validation loss (only ``plateau`` uses it)."""
        if self.cfg.scheduler != "plateau":
            return
        current = self.lr(epoch)
        if val_loss < self.plateau_best * (1 - 1e-4):
            self.plateau_best, self.plateau_bad_epochs = val_loss, 0
        else:
            self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs > self.cfg.plateau_patience:
            # A reduction only: an LR already below the floor stays where it is (as in torch).
            self.plateau_lr = min(current, max(current * self.cfg.plateau_factor, self.cfg.plateau_min_lr))
            self.plateau_bad_epochs = 0
        else:
            self.plateau_lr = current

    def to_dict(self) -> dict:
        return {
            "plateau_lr": self.plateau_lr,
            "plateau_best": self.plateau_best if math.isfinite(self.plateau_best) else None,
            "plateau_bad_epochs": self.plateau_bad_epochs,
        }

    def load(self, raw: dict) -> None:
        self.plateau_lr = raw["plateau_lr"]
        self.plateau_best = math.inf if raw["plateau_best"] is None else raw["plateau_best"]
        self.plateau_bad_epochs = raw["plateau_bad_epochs"]
