"""Root pytest configuration: persistent JAX compilation cache and the study options."""

import os
import pathlib

import jax

_CACHE = pathlib.Path(os.environ.get("JAXFNO_CACHE", pathlib.Path.home() / ".cache" / "jaxfno"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE / "jax_compilation"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_addoption(parser):
    group = parser.getgroup("jaxfno study")
    group.addoption("--scale", default="smoke", choices=("smoke", "reduced", "full"),
                    help="study scale for studies/ tests (default: smoke)")
    group.addoption("--seeds", type=int, default=None,
                    help="seeds per arm (default: the scale's own)")
    group.addoption("--study-dir", default=None,
                    help="where study runs and the report go (default: a temporary directory)")
