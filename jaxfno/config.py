"""Frozen, validated configuration for every stage of a run.

A run is fully described by a :class:`RunConfig`: data → model → physics → optimisation →
training. Every dataclass serialises to canonical JSON and hashes to a stable id, so a run
directory, a dataset cache entry or a study arm can be recognised by its config alone.
Validation happens in ``__post_init__`` so that a bad value fails before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, ClassVar, Optional


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the problem."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name}={value!r} is not one of {', '.join(choices)}")


class _Config:
    """Mixin: JSON round-trip and a stable content hash."""

    # Fields added after runs were recorded: left out at their default, so that every earlier
    # config keeps its JSON and hash (its run directory and checkpoints stay bound to it).
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self.ADDED_FIELDS and value == f.default:
                continue
            out[f.name] = value.to_dict() if isinstance(value, _Config) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(fields)
        _check(not unknown, f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
        kwargs = {}
        for name, value in raw.items():
            nested = _NESTED.get((cls.__name__, name))
            kwargs[name] = nested.from_dict(value) if nested is not None else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def config_hash(self) -> str:
        """First 12 hex digits of the SHA-256 of the canonical JSON (stable across runs)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Config):
    """The grid_lines benchmark (SPEC §1). The object seeds (1 train, 2 test) are fixed by the
    benchmark; ``noise_seed`` seeds the Poisson draw, so the dataset is fully reproducible.

    ``probe`` is ``"synthetic"`` (the documented defocused-pupil probe), ``"gaussian"`` (a smooth,
    flat-phase blob, for studying how probe structure affects learning) or a path to an NPZ file
    holding a 64×64 complex ``probeGuess``.
    """

    n: int = 64
    nimgs_train: int = 1
    nimgs_test: int = 1
    nphotons: float = 1e9
    set_phi: bool = True
    noise_seed: int = 20260128
    probe: str = "synthetic"
    train_stride: int = 4
    test_stride: int = 10

    def __post_init__(self):
        _check(self.n == 64, f"n={self.n}: only N=64 is supported (the benchmark's patch size)")
        _check(self.nimgs_train >= 1, f"nimgs_train={self.nimgs_train} must be >= 1")
        _check(self.nimgs_test >= 1, f"nimgs_test={self.nimgs_test} must be >= 1")
        _check(
            math.isfinite(self.nphotons) and self.nphotons > 0,
            f"nphotons={self.nphotons} must be a positive finite number",
        )
        _check(self.train_stride >= 1 and self.test_stride >= 1, "strides must be >= 1")
        _check(self.noise_seed >= 0, f"noise_seed={self.noise_seed} must be >= 0")
        _check(self.test_stride <= self.n,
               f"test_stride={self.test_stride} must be <= n={self.n}: stitching keeps a stride-wide core of each patch")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
    """Generator architecture (SPEC §3)."""

    ARCHS: ClassVar[tuple[str, ...]] = ("hybrid", "stable_hybrid", "fno")
    SPECTRAL: ClassVar[tuple[str, ...]] = ("upstream", "symmetric")

    arch: str = "hybrid"
    width: int = 32
    blocks: int = 4
    modes: int = 12
    max_hidden_channels: Optional[int] = None
    in_channels: int = 1
    spectral: str = "upstream"
    layerscale_init: float = 1e-3
    zero_gamma: bool = False

    def __post_init__(self):
        _choice("arch", self.arch, self.ARCHS)
        _choice("spectral", self.spectral, self.SPECTRAL)
        _check(self.width >= 1, f"width={self.width} must be >= 1")
        _check(self.modes >= 1, f"modes={self.modes} must be >= 1")
        _check(self.blocks >= 1, f"blocks={self.blocks} must be >= 1")
        _check(
            self.max_hidden_channels is None or self.max_hidden_channels >= self.width,
            f"max_hidden_channels={self.max_hidden_channels} must be >= width={self.width}",
        )
        _check(self.layerscale_init >= 0, "layerscale_init must be >= 0")


@dataclasses.dataclass(frozen=True)
class PhysicsConfig(_Config):
    """Loss and forward-model switches (SPEC §2). The upstream artefacts are off by default."""

    LOSSES: ClassVar[tuple[str, ...]] = ("mae", "poisson")
    BATCH_GAINS: ClassVar[tuple[str, ...]] = ("none", "upstream")
    OBJECT_SUPPORTS: ClassVar[tuple[str, ...]] = ("full", "central")

    loss: str = "mae"
    batch_gain: str = "none"
    object_support: str = "full"

    def __post_init__(self):
        _choice("loss", self.loss, self.LOSSES)
        _choice("batch_gain", self.batch_gain, self.BATCH_GAINS)
        _choice("object_support", self.object_support, self.OBJECT_SUPPORTS)


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Config):
    """Optimiser, per-epoch learning-rate schedule and gradient clipping (SPEC §4).

    ``grad_clip`` = 0 means no clipping. ``scheduler = "asrun_warmup"`` reproduces what upstream
    actually ran with a never-stepped WarmupCosine: a constant ``0.1 × lr``.
    """

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "adamw", "sgd")
    SCHEDULERS: ClassVar[tuple[str, ...]] = ("constant", "warmup_cosine", "plateau", "asrun_warmup")
    CLIPS: ClassVar[tuple[str, ...]] = ("norm", "value", "agc", "agc_tensor")

    optimizer: str = "adam"
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: str = "constant"
    warmup_epochs: int = 5
    lr_min_ratio: float = 0.05
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_min_lr: float = 1e-4
    grad_clip: float = 0.0
    grad_clip_algorithm: str = "norm"

    def __post_init__(self):
        _choice("optimizer", self.optimizer, self.OPTIMIZERS)
        _choice("scheduler", self.scheduler, self.SCHEDULERS)
        _choice("grad_clip_algorithm", self.grad_clip_algorithm, self.CLIPS)
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be > 0")
        _check(self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0 (0 = no clipping)")
        _check(self.warmup_epochs >= 0, f"warmup_epochs={self.warmup_epochs} must be >= 0")
        _check(0 <= self.lr_min_ratio <= 1, f"lr_min_ratio={self.lr_min_ratio} must be in [0, 1]")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(0 <= self.momentum < 1, "momentum must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Config):
    """Loop settings. ``train_subset`` = 0 uses every training pattern. ``stop_after`` = E > 0
    trains only the first E of ``epochs`` epochs (a truncated horizon, SPEC §7.3): the schedule
    stays defined over ``epochs``, so those E epochs are the full run's."""

    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("stop_after",)

    epochs: int = 20
    batch_size: int = 16
    infer_batch_size: int = 8
    seed: int = 20260128
    drop_last: bool = False
    train_subset: int = 0
    stop_after: int = 0

    @property
    def trained_epochs(self) -> int:
        """How many epochs the run trains."""
        return self.stop_after or self.epochs

    def __post_init__(self):
        _check(0 <= self.stop_after <= self.epochs,
               f"stop_after={self.stop_after} must be in [0, epochs={self.epochs}] (0 = all epochs)")
        _check(self.epochs >= 1, f"epochs={self.epochs} must be >= 1")
        _check(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(self.infer_batch_size >= 1, f"infer_batch_size={self.infer_batch_size} must be >= 1")
        _check(self.train_subset >= 0, f"train_subset={self.train_subset} must be >= 0")
        _check(self.seed >= 0, f"seed={self.seed} must be >= 0 (it seeds NumPy and JAX)")


@dataclasses.dataclass(frozen=True)
class RunConfig(_Config):
    """Everything one training run depends on; its hash names the run."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    physics: PhysicsConfig = PhysicsConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        o, t = self.optim, self.train
        if o.scheduler == "warmup_cosine":
            _check(
                o.warmup_epochs < t.epochs,
                f"warmup_epochs={o.warmup_epochs} must be < epochs={t.epochs}",
            )

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        """This config with ``SECTION.FIELD=VALUE`` changes applied, e.g. ``train.drop_last=true``
        or ``physics.batch_gain=none``. A value is read as JSON (numbers, true/false, null) or
        else as a plain string, and must have the field's type (an int where a float is due is
        accepted; the optional model.max_hidden_channels takes an int or null); the result is
        validated like any config."""
        raw = self.to_dict()
        for item in overrides:
            key, sep, text = item.partition("=")
            section, _, field = key.partition(".")
            _check(bool(sep) and bool(field), f"override {item!r} is not SECTION.FIELD=VALUE")
            _check(section in raw, f"override {item!r}: no config section {section!r} "
                                   f"(one of {', '.join(raw)})")
            _check(field in raw[section], f"override {item!r}: {section} has no field {field!r}")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            default = next(f.default for f in dataclasses.fields(_NESTED[("RunConfig", section)])
                           if f.name == field)
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            # The one optional field (model.max_hidden_channels) is an int or null.
            expected = (int, type(None)) if default is None else (type(default),)
            _check(type(value) in expected,
                   f"override {item!r}: {section}.{field} takes "
                   f"{' or '.join(t.__name__ for t in expected)}, not {value!r}")
            raw[section][field] = value
        return RunConfig.from_dict(raw)


_NESTED = {
    ("RunConfig", "data"): DataConfig,
    ("RunConfig", "model"): ModelConfig,
    ("RunConfig", "physics"): PhysicsConfig,
    ("RunConfig", "optim"): OptimConfig,
    ("RunConfig", "train"): TrainConfig,
}
