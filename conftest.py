"""Root pytest configuration: persistent JAX compilation cache, float32 precision on
accelerators, and the study options."""

import jax

from jaxfno.io import enable_compilation_cache

enable_compilation_cache()
# The tests check float32 numerics (PyTorch parity, DFT references, 1e-5 equivalences). On GPUs
# JAX's default runs float32 convolutions and matmuls in TF32, which the tolerances do not admit.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def pytest_addoption(parser):
    group = parser.getgroup("jaxfno study")
    group.addoption("--scale", default="smoke", choices=("smoke", "reduced", "full"),
                    help="study scale for studies/ tests (default: smoke)")
    group.addoption("--seeds", type=int, default=None,
                    help="seeds per arm (default: the scale's own)")
    group.addoption("--study-dir", default=None,
                    help="where study runs and the report go (default: a temporary directory)")
