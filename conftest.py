"""Root pytest configuration: persistent JAX compilation cache, float32 precision on
accelerators, and the study options."""

import jax

from jaxfno.cli.flags import scale_name
from jaxfno.io import enable_compilation_cache
from jaxfno.study.stage_a import CONDITIONS, SCALES

enable_compilation_cache()
# The tests check float32 numerics (PyTorch parity, DFT references, 1e-5 equivalences). On GPUs
# JAX's default runs float32 convolutions and matmuls in TF32, which the tolerances do not admit.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def pytest_addoption(parser):
    group = parser.getgroup("jaxfno study")
    group.addoption("--scale", default="smoke", type=scale_name, metavar="{" + ",".join(SCALES) + "}",
                    help="study scale for studies/ tests (default: smoke)")
    group.addoption("--seeds", type=int, default=None,
                    help="seeds per arm (default: the scale's own)")
    group.addoption("--study-dir", default=None,
                    help="where study runs and the report go (default: a temporary directory)")
    group.addoption("--conditions", nargs="+", default=None, choices=tuple(CONDITIONS),
                    help="conditions of the study (default: the scale's own)")
    group.addoption("--arms", nargs="+", default=None,
                    help="arms of the study (default: all in the fixed condition alone, else SPEC §7's six)")


# The longest test files (measured on the 2-core CPU: the smoke study ≈ 8 min, the training tests
# ≈ 5, sharding and the GPU-script dry run ≈ 2 each) are collected first. With the README's
# `--dist loadfile --no-loadscope-reorder`, xdist hands out files in collection order, so they
# start at once instead of last, and the two workers finish together.
LONGEST_FIRST = ("studies/", "tests/test_training.py", "tests/test_sharding.py",
                 "tests/test_gpu_check.py", "tests/test_cli.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order within a file is kept
