"""Each execution choice against its alternative, side by side in one process: the generator's
forward + backward (batch 16, 64×64) compiled under two ExecutionConfigs that differ in one
field, timed in alternating blocks (``jaxfno.bench.timing.alternating_blocks``), at the model
widths where the choice is meant to pay. Prints one line per comparison with the ratio and
writes them as JSON; this is the evidence ``docs/performance.md`` cites for keeping a choice.

    python benchmarks/execution_ab.py [OUT.json] [ROUNDS]
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfno.bench.timing import alternating_blocks, device_name
from jaxfno.config import ModelConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.models import build_model

# (field, kept value, alternative, model widths, passes); the other fields stay at their defaults.
COMPARISONS = [
    # conv3x3: a fused "taps" form for small convolutions lost to XLA's here (forward + backward
    # 0.98 / 0.94 at widths 4 / 8; forward 1.03 / 0.85: results/cpu/execution_ab_db6f597.json) and
    # was deleted; im2col is kept for vmapped members on a GPU (results/gpu_2026-11-27).
    ("spectral_transform", "dft", "fft", (8, 32)),
    ("spectral_mixing", "real", "complex", (32,)),  # only read by the fft transform
    ("cpu_conv", "eigen", "ynnpack", (32,)),
]


def step(execution: ExecutionConfig, model: ModelConfig, batch: int = 16, backward: bool = True):
    """Forward + backward (training) or the forward alone (validation) of the generator."""
    graphdef, params = nnx.split(build_model(model, 0, execution=execution))
    x = jax.random.uniform(jax.random.key(0), (batch, 64, 64, 1))

    def loss(p):
        return jnp.mean(jnp.square(nnx.merge(graphdef, p)(x)))

    fn = jax.value_and_grad(loss) if backward else loss
    compiled = jax.jit(fn, compiler_options=execution.compiler_options()).lower(params).compile()
    return lambda: jax.block_until_ready(compiled(params))


def main(out: str | None, rounds: int) -> None:
    rows = []
    for label, kept, other, widths in COMPARISONS:
        field, backward = label.split()[0], not label.endswith("forward")
        for width in widths:
            model = ModelConfig(arch="stable_hybrid", width=width)
            base = {"spectral_transform": "fft"} if field == "spectral_mixing" else {}
            fns = {value: step(ExecutionConfig(**base, **{field: value}), model, backward=backward)
                   for value in (kept, other)}
            timed = alternating_blocks(fns, rounds, block=3)
            row = {"field": field, "pass": "forward + backward" if backward else "forward", "width": width, "kept": kept, "other": other, **base,
                   "kept_s": timed[kept][0], "other_s": timed[other][0],
                   "other_over_kept": timed[other][0] / timed[kept][0]}
            rows.append(row)
            print(f"{label:<19} width {width:>2}: {kept} {1e3 * row['kept_s']:8.1f} ms, {other} "
                  f"{1e3 * row['other_s']:8.1f} ms, {other}/{kept} = {row['other_over_kept']:.2f}", flush=True)
    if out:
        with open(out, "w") as f:
            json.dump({"device": device_name(), "jax": jax.__version__, "rounds": rounds,
                       "what": "generator forward + backward (or forward), batch 16, 64x64, stable_hybrid, 4 blocks, 12 modes",
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
