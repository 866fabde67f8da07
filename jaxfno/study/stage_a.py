"""The Stage A study as data: named arms (SPEC §7 plus hypothesis arms) and scales.

An arm is a named RunConfig recipe; a scale fixes the size of the problem (model width, training
subset, epochs) without touching the recipe. ``config(arm, scale, seed)`` resolves one run.

Scales:
  * ``full``: the SPEC protocol (6889 training patterns, width 32, 4 blocks, 12 modes, 20 epochs,
    batch 16; 431 steps per epoch). Meant for a GPU.
  * ``reduced``: a CPU protocol that runs every arm × 3 seeds in under 2 hours on 2 cores:
    width 8, 4 blocks, 12 modes, the first 512 (pre-shuffled) training patterns, 20 epochs,
    batch 16 (32 steps per epoch; about 11 s per epoch and member on the 2-core CPU, a third
    of it the full validation pass). Same depth, resolution, optimiser recipes and test split.
  * ``smoke``: the same code paths in minutes for CI: width 4, 3 blocks, 6 modes,
    128 training patterns, 6 epochs (warmup 5 needs at least 6).
"""

from __future__ import annotations

import dataclasses

from jaxfno.config import DataConfig, ModelConfig, OptimConfig, PhysicsConfig, RunConfig, TrainConfig

STUDY_SEED = 20260128


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    description: str
    arch: str
    optim: OptimConfig
    physics: PhysicsConfig = PhysicsConfig()
    spectral: str = "upstream"


def _adam(lr: float, scheduler: str = "constant", clip: float = 0.0) -> OptimConfig:
    return OptimConfig(optimizer="adam", lr=lr, scheduler=scheduler, warmup_epochs=5,
                       lr_min_ratio=0.05, grad_clip=clip, grad_clip_algorithm="norm")


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    # SPEC §7: baselines and the seed plan's remedies.
    Arm("control", "hybrid generator, Adam 1e-3, norm clip 1.0", "hybrid", _adam(1e-3, clip=1.0)),
    Arm("stable", "stable_hybrid, Adam 1e-3, no clipping", "stable_hybrid", _adam(1e-3)),
    Arm("stable_warmup", "stable_hybrid, Adam 5e-4, warmup-cosine(5, 0.05)", "stable_hybrid",
        _adam(5e-4, "warmup_cosine")),
    Arm("stable_lowlr", "stable_hybrid, Adam 2.5e-4", "stable_hybrid", _adam(2.5e-4)),
    Arm("stable_warmup_lowlr", "stable_hybrid, Adam 2.5e-4, warmup-cosine(5, 0.05)",
        "stable_hybrid", _adam(2.5e-4, "warmup_cosine")),
    Arm("stable_warmup_clip", "stable_hybrid, Adam 5e-4, warmup-cosine(5, 0.05), norm clip 0.5",
        "stable_hybrid", _adam(5e-4, "warmup_cosine", clip=0.5)),
    # Hypothesis arms: each isolates one candidate cause of upstream's collapse.
    Arm("stable_upstream_gain", "stable arm with upstream's batch-gain artefact (g = batch size)",
        "stable_hybrid", _adam(1e-3), physics=PhysicsConfig(batch_gain="upstream")),
    Arm("stable_upstream_central", "stable_upstream_gain with the object zeroed outside the central "
        "32 × 32 (SPEC §10's second as-run condition)", "stable_hybrid", _adam(1e-3),
        physics=PhysicsConfig(batch_gain="upstream", object_support="central")),
    Arm("stable_asrun_warmup", "what upstream's never-stepped WarmupCosine ran: constant 0.1 × 5e-4",
        "stable_hybrid", _adam(5e-4, "asrun_warmup")),
    Arm("stable_symmetric", "stable arm with the textbook (±ky) spectral layer",
        "stable_hybrid", _adam(1e-3), spectral="symmetric"),
)}

@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    width: int
    blocks: int
    modes: int
    train_subset: int
    epochs: int
    seeds: int


SCALES: dict[str, Scale] = {s.name: s for s in (
    Scale("full", width=32, blocks=4, modes=12, train_subset=0, epochs=20, seeds=1),
    Scale("reduced", width=8, blocks=4, modes=12, train_subset=512, epochs=20, seeds=3),
    Scale("smoke", width=4, blocks=3, modes=6, train_subset=128, epochs=6, seeds=1),
)}


def seeds_for(count: int) -> list[int]:
    """The study seed first, then consecutive seeds."""
    return [STUDY_SEED + i for i in range(count)]


def config(arm: str | Arm, scale: str | Scale, seed: int = STUDY_SEED,
           data: DataConfig = DataConfig()) -> RunConfig:
    """One run of ``arm`` at ``scale``; ``data`` is the dataset every arm trains on (its probe,
    photon count, noise seed: SPEC §10's conditions that are not in the arm)."""
    arm = ARMS[arm] if isinstance(arm, str) else arm
    scale = SCALES[scale] if isinstance(scale, str) else scale
    return RunConfig(
        data=data,
        model=ModelConfig(arch=arm.arch, width=scale.width, blocks=scale.blocks,
                          modes=scale.modes, spectral=arm.spectral),
        physics=arm.physics,
        optim=arm.optim,
        train=TrainConfig(epochs=scale.epochs, batch_size=16, infer_batch_size=8, seed=seed,
                          train_subset=scale.train_subset),
    )
