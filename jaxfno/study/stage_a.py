"""The Stage A study as data: named arms (SPEC §7 plus hypothesis arms), conditions and scales.

An arm is a named RunConfig recipe; a condition is what every arm runs under (SPEC §7.1: the
data's phase and upstream's artefacts); a scale fixes the size of the problem (model width,
training subset, epochs, a truncated horizon) without touching either.
``config(arm, scale, seed, data, condition)`` resolves one run.

Scales:
  * ``full``: the SPEC protocol (6889 training patterns, width 32, 4 blocks, 12 modes, 20 epochs,
    batch 16; 431 steps per epoch).
  * ``reduced``: width 8, the first 512 (pre-shuffled) training patterns, 20 epochs.
  * ``smoke``: the same code paths in minutes for CI: SPEC §7's six arms at width 4, 3 blocks,
    6 modes, 128 training patterns, 6 epochs (warmup 5 needs at least 6).
  * ``demo``: the README's first command, minutes on a 2-core CPU: SPEC §7's six arms at width
    8 on 512 training patterns for 8 epochs, long enough for the arms to learn.
  * ``proxy_*``: candidates for the proxy of SPEC §7.3 (see the comment at ``SCALES``).
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
class Condition:
    """What every arm of a study runs under (SPEC §7.1): the data's phase and upstream's
    artefacts. A condition changes only fields an arm leaves at their defaults."""

    name: str
    description: str
    set_phi: bool = True
    batch_gain: str = "none"
    object_support: str = "full"
    drop_last: bool = False


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("fixed", "SPEC as written: batch gain off, set_phi on, short last batch kept"),
    # SPEC §7.1 adds the zero-phase object to asrun only if it reproduces upstream's early
    # collapse; at full scale on this project's CPU it did not (results/stage_a_full_asrun).
    Condition("asrun", "upstream as run: batch gain on, short last batch kept (set_phi on)",
              batch_gain="upstream"),
    # The fidelity check's cells (SPEC §7.1, §10): asrun with one ingredient added or changed.
    Condition("asrun_zero_phase", "asrun on the zero-phase object (SPEC §9.5, §10's lead)", set_phi=False,
              batch_gain="upstream"),
    Condition("asrun_zero_phase_nogain", "the zero-phase object without the batch gain", set_phi=False),
    Condition("asrun_zero_phase_drop_last", "asrun_zero_phase without the short last batch", set_phi=False,
              batch_gain="upstream", drop_last=True),
    # the short batch's part in the late divergences (FINDINGS section 6): asrun without it; `fixed`
    # is asrun without the gain
    Condition("asrun_drop_last", "asrun without the short last batch", batch_gain="upstream", drop_last=True),
    Condition("asrun_central", "asrun with the object zeroed outside the central 32 × 32",
              batch_gain="upstream", object_support="central"),
)}


SPEC_ARMS = ("control", "stable", "stable_warmup", "stable_lowlr", "stable_warmup_lowlr",
             "stable_warmup_clip")


@dataclasses.dataclass(frozen=True)
class Scale:
    """Problem size. ``stop_after`` > 0 truncates the horizon (SPEC §7.3): the run trains that
    many of ``epochs`` epochs, its schedules still defined over ``epochs``."""

    name: str
    width: int
    blocks: int
    modes: int
    train_subset: int
    epochs: int
    seeds: int
    stop_after: int = 0
    conditions: tuple[str, ...] = ("fixed",)  # the study's default conditions at this scale
    arms: tuple[str, ...] = ()  # the study's default arms at this scale (empty: default_arms)


SCALES: dict[str, Scale] = {s.name: s for s in (
    Scale("full", width=32, blocks=4, modes=12, train_subset=0, epochs=20, seeds=1),
    Scale("reduced", width=8, blocks=4, modes=12, train_subset=512, epochs=20, seeds=3),
    # CI's study: SPEC §7's six arms (the hypothesis arms' knobs have unit tests).
    Scale("smoke", width=4, blocks=3, modes=6, train_subset=128, epochs=6, seeds=1, arms=SPEC_ARMS),
    Scale("demo", width=8, blocks=4, modes=12, train_subset=512, epochs=8, seeds=1,
          arms=SPEC_ARMS),
    # Proxy candidates (SPEC §7.3), calibrated against full scale for `stable` in asrun and fixed
    # (results/stage_a_proxy/calibration): 1609 = 100 × 16 + 9 patterns keep a 9-sample last batch.
    Scale("proxy_w8", width=8, blocks=4, modes=12, train_subset=1609, epochs=20, seeds=3,
          conditions=("asrun", "fixed")),
    Scale("proxy_w16", width=16, blocks=4, modes=12, train_subset=1609, epochs=20, seeds=3,
          conditions=("asrun", "fixed")),
    # The full training set at width 8: full scale's step count and short batches (6889 = 430 × 16 + 9),
    # where the full-scale divergences came (steps 7800-8200), at about a quarter of its cost.
    Scale("proxy_full_w8", width=8, blocks=4, modes=12, train_subset=0, epochs=20, seeds=3,
          conditions=("asrun", "fixed")),
    # Width 8 on the full set stayed healthy, its loss above full scale's (FINDINGS.md section 2);
    # width 16 is the next step towards full scale's model.
    Scale("proxy_full_w16", width=16, blocks=4, modes=12, train_subset=0, epochs=20, seeds=3,
          conditions=("asrun", "fixed")),
    # Width 16 reached the loss at which full scale diverged only in its last epochs: twice the
    # epochs, so that it trains there for longer.
    Scale("proxy_full_w16_e40", width=16, blocks=4, modes=12, train_subset=0, epochs=40, seeds=3,
          conditions=("asrun", "fixed")),
)}

# SPEC §7.3's `proxy` joins SCALES, as the candidate that reproduced, once one does.
UNCALIBRATED_PROXY = ("no scale 'proxy' yet: SPEC §7.3's proxy is a proxy_* candidate that reproduces full scale's "
                      "outcome rates of `stable` in asrun and fixed, and none has so far (FINDINGS.md section 2, "
                      "results/stage_a_proxy/README.md); choose from " + ", ".join(SCALES))


def default_arms(conditions, scale: str | None = None) -> list[str]:
    """The scale's own default arms if it names them; else every arm in the fixed condition
    alone, SPEC §7's six where another condition sets the physics (the hypothesis arms set
    their own)."""
    if scale is not None and SCALES[scale].arms:
        return list(SCALES[scale].arms)
    return list(ARMS) if list(conditions) == ["fixed"] else list(SPEC_ARMS)


def identify(cfg: RunConfig, scale: str | Scale) -> list[tuple[str, str]]:
    """Every (arm, condition) whose run at ``scale`` with ``cfg``'s seed and base data is ``cfg``
    (an arm with its own physics can equal another arm in a condition)."""
    base = cfg.data.replace(set_phi=True)
    found = []
    for c in CONDITIONS:
        for a in ARMS:
            try:
                candidate = config(a, scale, cfg.train.seed, base if c != "fixed" else cfg.data, c)
            except ValueError:
                continue
            if candidate == cfg:
                found.append((a, c))
    return found


def run_device(history: dict) -> str:
    """The device a run trained on, as its history records it."""
    return history.get("execution", {}).get("device", "unknown device")


def expectation_section(scale: str, history: dict) -> str:
    """The section of ``expectations.json`` for a run at ``scale`` with this history: a seed's
    trajectory, and so whether it collapses, depends on the hardware it trained on."""
    device = run_device(history)
    return scale if device == "cpu" else f"{scale}@{device}"


def seeds_for(count: int) -> list[int]:
    """The study seed first, then consecutive seeds."""
    return [STUDY_SEED + i for i in range(count)]


def data_config(condition: str | Condition = "fixed", data: DataConfig = DataConfig()) -> DataConfig:
    """The dataset a condition trains on: ``data`` (probe, photons, noise seed) with its phase."""
    condition = CONDITIONS[condition] if isinstance(condition, str) else condition
    return data.replace(set_phi=condition.set_phi)


def config(arm: str | Arm, scale: str | Scale, seed: int = STUDY_SEED,
           data: DataConfig = DataConfig(), condition: str | Condition = "fixed") -> RunConfig:
    """One run of ``arm`` at ``scale`` in ``condition``; ``data`` is the dataset every arm
    trains on (its probe, photon count, noise seed: SPEC §10's conditions that are not in the
    arm; the condition sets its phase)."""
    arm = ARMS[arm] if isinstance(arm, str) else arm
    scale = SCALES[scale] if isinstance(scale, str) else scale
    condition = CONDITIONS[condition] if isinstance(condition, str) else condition
    physics = arm.physics
    if condition.name != "fixed":
        if physics != PhysicsConfig():
            raise ValueError(f"arm {arm.name} sets its own physics ({physics.to_dict()}); "
                             f"it runs only in the 'fixed' condition, not {condition.name!r}")
        physics = PhysicsConfig(batch_gain=condition.batch_gain, object_support=condition.object_support)
    return RunConfig(
        data=data_config(condition, data) if condition.name != "fixed" else data,
        model=ModelConfig(arch=arm.arch, width=scale.width, blocks=scale.blocks,
                          modes=scale.modes, spectral=arm.spectral),
        physics=physics,
        optim=arm.optim,
        train=TrainConfig(epochs=scale.epochs, batch_size=16, infer_batch_size=8, seed=seed,
                          train_subset=scale.train_subset, drop_last=condition.drop_last,
                          stop_after=scale.stop_after),
    )
