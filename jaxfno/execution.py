"""How a program executes, as configuration: kernels, member lifting, update scope, compiler
options. Every choice computes the same function up to float rounding (tests check it), so it
is kept out of the science config and its hash; it is chosen at the edge (CLI, study, bench),
passed down to the layers and the engine, and recorded with every run (``history["execution"]``).
Measurements behind each default: ``docs/performance.md`` and ``results/cpu/README.md``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from jaxfno.config import ConfigError, field

# Options that may be "auto": resolved per backend by :meth:`ExecutionConfig.resolved`.
CHOICES: dict[str, tuple[str, ...]] = {
    # 3×3 convolutions: XLA's convolution, or nine shifted copies and one matmul (stays a
    # batched matmul under vmap: pays for vmapped members on the H200, results/gpu_2026-11-27).
    "conv3x3": ("xla", "im2col"),
    # Fourier layers: rfft2 → kept block → irfft2, or matmuls with the kept modes' cos/sin tables.
    "spectral_transform": ("auto", "fft", "dft"),
    # Per-mode complex matrices: one complex einsum, or two real matmuls.
    "spectral_mixing": ("auto", "complex", "real"),
    # XLA:CPU convolutions: XLA's own multi-threaded (eigen) or jaxlib's default YNNPACK.
    "cpu_conv": ("eigen", "ynnpack"),
    # Members of one program: vmapped (batched kernels) or written out one after another.
    "member_axis": ("auto", "vmap", "unroll"),
    # Train only each weight's gradient-receiving block, or whole tensors.
    "update": ("reachable", "full"),
}

# CPU defaults where "auto": each measured faster on the 2-core CPU (docs/performance.md);
# elsewhere the portable choice (cuFFT, one complex GPU kernel, batched kernels).
_AUTO = {"cpu": {"spectral_transform": "dft", "spectral_mixing": "real", "member_axis": "unroll"},
         "other": {"spectral_transform": "fft", "spectral_mixing": "complex", "member_axis": "vmap"}}


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How a program executes (kernels, member lifting, update scope): never what it computes."""

    conv3x3: str = field("xla", "3x3 convolution: XLA's, or nine shifted copies and one matmul (im2col)",
                         choices=CHOICES["conv3x3"])
    spectral_transform: str = field("auto", "Fourier layers: rfft2 of the map (fft) or matmuls with the "
                                    "kept modes' tables (dft); auto: dft on the CPU, else fft",
                                    choices=CHOICES["spectral_transform"])
    spectral_mixing: str = field("auto", "mode mixing: one complex einsum or two real matmuls (fft "
                                 "transform only); auto: real on the CPU, else complex",
                                 choices=CHOICES["spectral_mixing"])
    cpu_conv: str = field("eigen", "XLA:CPU convolutions: XLA's multi-threaded (eigen) or jaxlib's "
                          "YNNPACK", choices=CHOICES["cpu_conv"])
    member_axis: str = field("auto", "members of one program: vmapped or unrolled; auto: unroll on "
                             "the CPU, else vmap", choices=CHOICES["member_axis"])
    update: str = field("reachable", "train only each weight's gradient-receiving block, or whole "
                        "tensors", choices=CHOICES["update"])

    def __post_init__(self):
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"execution.{name}={value!r} is not one of {choices}")

    def resolved(self, backend: str | None = None) -> "ExecutionConfig":
        """The concrete choices on ``backend`` (default: JAX's default backend)."""
        table = _AUTO["cpu" if (backend or jax.default_backend()) == "cpu" else "other"]
        return dataclasses.replace(self, **{name: table[name] for name in table
                                            if getattr(self, name) == "auto"})

    def compiler_options(self, backend: str | None = None) -> dict[str, str] | None:
        """XLA options for every program that runs the generator. On the CPU jaxlib hands
        convolutions to YNNPACK, single-threaded; ``eigen`` keeps YNNPACK for matmuls and
        reductions only. Other backends: none."""
        if (backend or jax.default_backend()) != "cpu" or self.cpu_conv == "ynnpack":
            return None
        return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ExecutionConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"ExecutionConfig: unknown field(s) {sorted(unknown)}")
        return cls(**raw)

    def record(self) -> dict[str, Any]:
        """What a run's history and a benchmark's JSON keep: the resolved choices, the XLA
        options they imply, and the process's glibc tunables (set by the CLI, see
        ``jaxfno.cli.reexec_with_huge_pages``)."""
        return {**self.resolved().to_dict(), "xla_options": self.compiler_options(),
                "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
