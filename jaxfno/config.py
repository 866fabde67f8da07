"""Frozen, validated configuration for every stage of a run.

A run is fully described by a :class:`RunConfig`: data → model → physics → optimisation →
training. Every dataclass serialises to canonical JSON and hashes to a stable id, so a run
directory, a dataset cache entry or a study arm can be recognised by its config alone.
Validation happens in ``__post_init__`` so that a bad value fails before anything is compiled:
every field's type, each value's range, and the combinations a run cannot train (e.g. a hybrid
deeper than the patch allows). Each field carries its help text (and its choices) in
``dataclasses.field`` metadata, from which the command line derives its flags (``jaxfno.cli``).
Longer than the ~300 lines a module here aims at because each section's fields and their checks
stay together: splitting it would part a field from its validation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from typing import Any, ClassVar, Optional


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the problem."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name}={value!r} is not one of {', '.join(choices)}")


def _finite(name: str, value: float, low: float = -math.inf, high: float = math.inf,
            closed: str = "[]") -> None:
    """``value`` finite and within ``low``…``high`` (``closed`` says which ends are included)."""
    inside = (math.isfinite(value) and (value >= low if closed[0] == "[" else value > low)
              and (value <= high if closed[1] == "]" else value < high))
    bounds = f"{closed[0] if low > -math.inf else '('}{low:g}, {high:g}{closed[1] if high < math.inf else ')'}"
    _check(inside, f"{name}={value!r} must be a finite number in {bounds}")


def field(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its help text (and e.g. ``choices=``) in ``dataclasses.field``
    metadata: one source for validation, JSON and the command line's flags. ``flag=False`` keeps
    a field off the flags (it stays settable with ``--set``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


# The benchmark's object side (jaxfno.data.lines.OBJECT_SIZE, checked by a test): with the patch
# side n it gives the number of training patterns a config implies, so impossible batch settings
# fail here rather than after the dataset is built.
OBJECT_SIZE = 392
# Seeds reach jax.random.key, which takes a signed 64-bit integer.
MAX_SEED = 2 ** 63 - 1


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_type(value: Any, expected: Any) -> bool:
    """``value`` is of the annotated type: bool is not an int here, an int is a float."""
    if typing.get_origin(expected) is typing.Union:  # Optional[int]
        return any(_has_type(value, t) for t in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected in (int, float):
        numeric = (int, float) if expected is float else int
        return isinstance(value, numeric) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) is typing.Union:
        return " or ".join(_type_name(t) for t in typing.get_args(expected))
    return "null" if expected is type(None) else expected.__name__


def parse_field(cls: type, name: str, text: str) -> Any:
    """The value of dataclass ``cls``'s field ``name`` written as ``text`` (from a flag or
    ``--set``). A string field takes the text as it is; a bool takes true/false; a number is read
    as JSON or else as a Python literal (``.5``, ``nan``: validation refuses the non-finite), an
    int is accepted for a float; an optional field takes null/none. Raises ConfigError naming the
    field and the type it takes."""
    expected = _type_hints(cls)[name]
    if expected is str:
        return text
    word = text.strip().lower()
    if word in ("true", "false"):
        value: Any = word == "true"
    elif word in ("null", "none"):
        value = None
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
            for convert in (int, float):
                try:
                    value = convert(text)
                    break
                except ValueError:
                    pass
    if type(value) is int and (expected is float or float in typing.get_args(expected)):
        value = float(value)
    _check(_has_type(value, expected), f"{name} takes {_type_name(expected)}, not {value!r}")
    return value


class _Config:
    """Mixin: JSON round-trip and a stable content hash."""

    # Fields added after runs were recorded: left out at their default, so that every earlier
    # config keeps its JSON and hash (its run directory and checkpoints stay bound to it).
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self._check_types()
        self.validate()

    def validate(self) -> None:
        """Ranges and combinations (types are checked before)."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Each field's annotated type (``int``, ``float``, ``bool``, ``str``, ``Optional[int]``
        or a nested config class)."""
        return _type_hints(cls)

    def _check_types(self) -> None:
        # bool is an int in Python, so it is excluded explicitly; an int is a valid float (it
        # keeps its JSON, so hashes of configs written with one stay as they are).
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), self.field_types()[f.name]
            _check(_has_type(value, expected),
                   f"{f.name}={value!r} is a {type(value).__name__}, not {_type_name(expected)}")

    @classmethod
    def parse_value(cls, name: str, text: str) -> Any:
        """The value of field ``name`` written as ``text``: see :func:`parse_field`."""
        return parse_field(cls, name, text)

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
        _check(isinstance(raw, dict), f"{cls.__name__}: expected a JSON object, got {raw!r}")
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
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cls.__name__}: not JSON ({err})") from None
        return cls.from_dict(raw)

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

    PROBES: ClassVar[tuple[str, ...]] = ("synthetic", "gaussian")

    n: int = field(64, "patch side in pixels (only the benchmark's 64)", flag=False)
    nimgs_train: int = field(1, "simulated training objects (392×392 each, cut into patches)")
    nimgs_test: int = field(1, "simulated test objects")
    nphotons: float = field(1e9, "photons per diffraction pattern (sets the Poisson noise level)")
    set_phi: bool = field(True, "give the objects a phase (--no-set-phi: the zero-phase object)")
    noise_seed: int = field(20260128, "seed of the Poisson noise draw")
    probe: str = field("synthetic", "illumination: 'synthetic' (defocused pupil), 'gaussian' (smooth, "
                                    "flat phase) or an NPZ file holding a 64×64 complex probeGuess",
                       metavar="synthetic|gaussian|FILE.npz")
    train_stride: int = field(4, "pixels between training patch origins (4: 83×83 patches per object)")
    test_stride: int = field(10, "pixels between test patch origins; stitching keeps each patch's "
                                 "central stride×stride core")

    @property
    def n_train_patterns(self) -> int:
        """Training patterns the dataset of this config holds: patches per object × objects."""
        return ((OBJECT_SIZE - self.n) // self.train_stride + 1) ** 2 * self.nimgs_train

    def validate(self):
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
        _check(self.probe.strip() != "", "probe is empty: 'synthetic', 'gaussian' or an NPZ file's path")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
    """Generator architecture (SPEC §3)."""

    ARCHS: ClassVar[tuple[str, ...]] = ("hybrid", "stable_hybrid", "fno")
    SPECTRAL: ClassVar[tuple[str, ...]] = ("upstream", "symmetric")

    arch: str = field("hybrid", "generator: hybrid (U-shaped FNO), stable_hybrid (its LayerScale and "
                                "InstanceNorm blocks) or fno (upstream's cascaded blocks at full resolution)",
                      choices=ARCHS)
    width: int = field(32, "channels of the first level (doubling per level of a hybrid)")
    blocks: int = field(4, "Fourier blocks (a hybrid's encoder levels; at most 7 at N=64)")
    modes: int = field(12, "Fourier modes kept per axis (a hybrid's bottleneck keeps modes//2)")
    max_hidden_channels: Optional[int] = field(None, "cap on any level's channels (none: no cap)",
                                               metavar="INT|none")
    in_channels: int = field(1, "input channels (the diffraction amplitude: 1)", flag=False)
    spectral: str = field("upstream", "spectral layer: upstream's (one block of modes, its ky "
                                      "artefact) or the textbook symmetric ±ky one", choices=SPECTRAL)
    layerscale_init: float = field(1e-3, "stable_hybrid: initial LayerScale λ")
    zero_gamma: bool = field(False, "stable_hybrid: start the InstanceNorm scales at zero")

    @property
    def min_modes(self) -> int:
        """Fewest modes every Fourier layer can keep: the symmetric layer needs 2 (±ky), and a
        hybrid's bottleneck keeps modes//2."""
        per_layer = 1 if self.spectral == "upstream" else 2
        return 2 * per_layer if self.arch in ("hybrid", "stable_hybrid") else per_layer

    def validate(self):
        _choice("arch", self.arch, self.ARCHS)
        _choice("spectral", self.spectral, self.SPECTRAL)
        _check(self.width >= 1, f"width={self.width} must be >= 1")
        _check(self.modes >= 1, f"modes={self.modes} must be >= 1")
        _check(self.modes >= self.min_modes,
               f"modes={self.modes} must be >= {self.min_modes} for arch={self.arch} with the "
               f"{self.spectral} spectral layer" + (" (the bottleneck keeps modes//2)"
                                                    if self.arch != "fno" else ""))
        _check(self.blocks >= 1, f"blocks={self.blocks} must be >= 1")
        _check(self.in_channels >= 1, f"in_channels={self.in_channels} must be >= 1")
        _check(
            self.max_hidden_channels is None or self.max_hidden_channels >= self.width,
            f"max_hidden_channels={self.max_hidden_channels} must be >= width={self.width}",
        )
        _check(math.isfinite(self.layerscale_init) and self.layerscale_init >= 0,
               f"layerscale_init={self.layerscale_init} must be a finite number >= 0")


@dataclasses.dataclass(frozen=True)
class PhysicsConfig(_Config):
    """Loss and forward-model switches (SPEC §2). The upstream artefacts are off by default."""

    LOSSES: ClassVar[tuple[str, ...]] = ("mae", "poisson")
    BATCH_GAINS: ClassVar[tuple[str, ...]] = ("none", "upstream")
    OBJECT_SUPPORTS: ClassVar[tuple[str, ...]] = ("full", "central")

    loss: str = field("mae", "training loss on the diffraction amplitude", choices=LOSSES)
    batch_gain: str = field("none", "upstream's batch-size gain on the prediction (the as-run artefact)",
                            choices=BATCH_GAINS)
    object_support: str = field("full", "object support: the whole patch, or zero outside the central 32×32",
                                choices=OBJECT_SUPPORTS)

    def validate(self):
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

    optimizer: str = field("adam", "optimiser (sgd: Nesterov when momentum > 0)", choices=OPTIMIZERS)
    lr: float = field(1e-3, "learning rate (the schedule's peak)")
    b1: float = field(0.9, "Adam/AdamW β1")
    b2: float = field(0.999, "Adam/AdamW β2")
    eps: float = field(1e-8, "Adam/AdamW ε (> 0)")
    weight_decay: float = field(0.01, "AdamW decoupled weight decay")
    momentum: float = field(0.9, "SGD momentum (0: plain SGD)")
    scheduler: str = field("constant", "per-epoch schedule: constant, warmup_cosine (linear warmup, cosine "
                                       "decay), plateau (ReduceLROnPlateau) or asrun_warmup (constant 0.1 × lr)",
                           choices=SCHEDULERS)
    warmup_epochs: int = field(5, "warmup_cosine: epochs of linear warmup (< epochs)")
    lr_min_ratio: float = field(0.05, "warmup_cosine: final lr as a fraction of lr")
    plateau_factor: float = field(0.5, "plateau: factor the lr is multiplied by, in (0, 1)")
    plateau_patience: int = field(2, "plateau: epochs without improvement before the lr drops")
    plateau_min_lr: float = field(1e-4, "plateau: lower bound of the lr")
    grad_clip: float = field(0.0, "gradient clipping threshold (0: no clipping)")
    grad_clip_algorithm: str = field("norm", "what grad_clip bounds: the global norm, each value, or the "
                                             "gradient/parameter norm ratio unit-wise (agc) or per tensor",
                                     choices=CLIPS)

    def validate(self):
        _choice("optimizer", self.optimizer, self.OPTIMIZERS)
        _choice("scheduler", self.scheduler, self.SCHEDULERS)
        _choice("grad_clip_algorithm", self.grad_clip_algorithm, self.CLIPS)
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be > 0")
        _check(self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0 (0 = no clipping)")
        _finite("grad_clip", self.grad_clip, 0)
        _check(self.warmup_epochs >= 0, f"warmup_epochs={self.warmup_epochs} must be >= 0")
        _check(0 <= self.lr_min_ratio <= 1, f"lr_min_ratio={self.lr_min_ratio} must be in [0, 1]")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _finite("weight_decay", self.weight_decay, 0)
        _check(0 <= self.momentum < 1, "momentum must be in [0, 1)")
        _finite("b1", self.b1, 0, 1, "[)")
        _finite("b2", self.b2, 0, 1, "[)")
        _finite("eps", self.eps, 0, closed="(]")
        _finite("plateau_factor", self.plateau_factor, 0, 1, "()")
        _check(self.plateau_patience >= 0, f"plateau_patience={self.plateau_patience} must be >= 0")
        _finite("plateau_min_lr", self.plateau_min_lr, 0)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Config):
    """Loop settings. ``train_subset`` = 0 uses every training pattern. ``stop_after`` = E > 0
    trains only the first E of ``epochs`` epochs (a truncated horizon, SPEC §7.3): the schedule
    stays defined over ``epochs``, so those E epochs are the full run's."""

    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("stop_after",)

    epochs: int = field(20, "epochs the schedule is defined over (and trained, unless stop_after)")
    batch_size: int = field(16, "training batch")
    infer_batch_size: int = field(8, "validation and prediction batch")
    seed: int = field(20260128, "seed of the initialisation and the batch order")
    drop_last: bool = field(False, "drop each epoch's short last batch (else it is padded and masked)")
    train_subset: int = field(0, "train on the first N patterns (0: all)")
    stop_after: int = field(0, "train only the first E of the epochs (0: all; a truncated horizon)")

    @property
    def trained_epochs(self) -> int:
        """How many epochs the run trains."""
        return self.stop_after or self.epochs

    def validate(self):
        _check(0 <= self.stop_after <= self.epochs,
               f"stop_after={self.stop_after} must be in [0, epochs={self.epochs}] (0 = all epochs)")
        _check(self.epochs >= 1, f"epochs={self.epochs} must be >= 1")
        _check(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(self.infer_batch_size >= 1, f"infer_batch_size={self.infer_batch_size} must be >= 1")
        _check(self.train_subset >= 0, f"train_subset={self.train_subset} must be >= 0")
        _check(self.seed >= 0, f"seed={self.seed} must be >= 0 (it seeds NumPy and JAX)")
        _check(self.seed <= MAX_SEED, f"seed={self.seed} must be < 2**63 (jax.random.key takes an int64)")


@dataclasses.dataclass(frozen=True)
class RunConfig(_Config):
    """Everything one training run depends on; its hash names the run."""

    data: DataConfig = field(DataConfig(), "the dataset")
    model: ModelConfig = field(ModelConfig(), "the generator")
    physics: PhysicsConfig = field(PhysicsConfig(), "loss and forward model")
    optim: OptimConfig = field(OptimConfig(), "optimiser, schedule, clipping")
    train: TrainConfig = field(TrainConfig(), "the loop")

    def validate(self):
        d, m, o, t = self.data, self.model, self.optim, self.train
        if o.scheduler == "warmup_cosine":
            _check(
                o.warmup_epochs < t.epochs,
                f"warmup_epochs={o.warmup_epochs} must be < epochs={t.epochs}",
            )
        _check(m.in_channels == 1, f"model.in_channels={m.in_channels}: the input is one channel "
                                   "(the diffraction amplitude)")
        if m.arch in ("hybrid", "stable_hybrid"):
            # The coarsest map, n / 2**(blocks - 1), is at least 1×1; the symmetric layer keeps
            # ±ky rows, so on a 1×1 map it would keep none (a layer that does nothing): 2×2.
            side = 1 if m.spectral == "upstream" else 2
            deepest = (d.n // side).bit_length()
            _check(m.blocks <= deepest,
                   f"blocks={m.blocks} is impossible for arch={m.arch} with the {m.spectral} spectral layer "
                   f"at n={d.n}: its {m.blocks - 1} stride-2 downsamples would shrink the map below "
                   f"{side}×{side}; at most {deepest} blocks fit")
        n_train = d.n_train_patterns
        _check(t.train_subset <= n_train, f"train_subset={t.train_subset} exceeds the dataset's {n_train} "
                                          "training patterns (0 uses them all)")
        n_train = t.train_subset or n_train
        _check(not t.drop_last or n_train >= t.batch_size,
               f"drop_last with {n_train} training patterns and batch_size {t.batch_size}: not one "
               "full batch, so no step per epoch")

    @classmethod
    def sections(cls) -> dict[str, type]:
        """Section name → its config class (data, model, physics, optim, train)."""
        return {f.name: cls.field_types()[f.name] for f in dataclasses.fields(cls)}

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        """This config with ``SECTION.FIELD=VALUE`` changes applied, e.g. ``train.drop_last=true``
        or ``physics.batch_gain=none``. A value is read by the field's type
        (:meth:`_Config.parse_value`: JSON for numbers, true/false and null, a string field's
        text as it is; an int is accepted where a float is due; the optional
        model.max_hidden_channels takes an int or null); the result is validated like any config."""
        raw = self.to_dict()
        sections = self.sections()
        for item in overrides:
            key, sep, text = item.partition("=")
            section, _, name = key.partition(".")
            _check(bool(sep) and bool(name), f"override {item!r} is not SECTION.FIELD=VALUE")
            _check(section in sections, f"override {item!r}: no config section {section!r} "
                                        f"(one of {', '.join(sections)})")
            cls = sections[section]
            _check(name in cls.field_types(), f"override {item!r}: {section} has no field {name!r}")
            try:
                raw[section][name] = cls.parse_value(name, text)
            except ConfigError as err:
                raise ConfigError(f"override {item!r}: {section}.{err}") from None
        return RunConfig.from_dict(raw)


_NESTED = {("RunConfig", name): cls for name, cls in RunConfig.sections().items()}
