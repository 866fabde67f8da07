"""Forward + both gradients of every 3×3 convolution of the full-size hybrid generator (batch
16), JAX (the generator's XLA options) against PyTorch eager, timed in turn; prints each
shape and the totals weighted by how often the generator uses it.

    python benchmarks/conv3x3_vs_torch.py [REPEATS]
"""

import sys

import jax
import torch

from jaxfno.bench import median_seconds
from jaxfno.execution import ExecutionConfig
from jaxfno.models.kernels import conv3x3

BATCH = 16
# (map size, in, out channels): how many of each the default hybrid generator has
SHAPES = {(64, 1, 32): 1, (64, 32, 32): 3, (64, 64, 32): 1, (32, 64, 64): 2, (32, 128, 64): 1,
          (16, 128, 128): 2, (16, 256, 128): 1, (8, 256, 256): 2}


def main(repeats: int) -> None:
    torch.set_num_threads(2)
    totals = {"jax": 0.0, "torch": 0.0}
    for (size, c_in, c_out), count in SHAPES.items():
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (BATCH, size, size, c_in))
        kernel = 0.1 * jax.random.normal(keys[1], (3, 3, c_in, c_out))
        cotangent = jax.random.normal(keys[2], (BATCH, size, size, c_out))
        grads = jax.jit(lambda x, k, g: jax.vjp(lambda x, k: conv3x3(x, k, "xla"), x, k)[1](g)).lower(
            x, kernel, cotangent).compile(ExecutionConfig().compiler_options())
        jax.block_until_ready(grads(x, kernel, cotangent))  # warm-up: first-run allocations
        jax_s = median_seconds(lambda: grads(x, kernel, cotangent), repeats)

        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        x_t = torch.randn(BATCH, c_in, size, size, requires_grad=True)
        cotangent_t = torch.randn(BATCH, c_out, size, size)
        conv(x_t).backward(cotangent_t)
        torch_s = median_seconds(lambda: conv(x_t).backward(cotangent_t), repeats)

        totals["jax"] += count * jax_s
        totals["torch"] += count * torch_s
        print(f"{size:>3}×{size:<3} {c_in:>3}→{c_out:<3} ×{count}: JAX {1e3 * jax_s:6.1f} ms, "
              f"PyTorch {1e3 * torch_s:6.1f} ms")
    print(f"all 3×3 convolutions of the generator: JAX {1e3 * totals['jax']:.1f} ms, "
          f"PyTorch {1e3 * totals['torch']:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
