"""Root pytest configuration: persistent JAX compilation cache and the study options."""

from jaxfno.io import enable_compilation_cache

enable_compilation_cache()


def pytest_addoption(parser):
    group = parser.getgroup("jaxfno study")
    group.addoption("--scale", default="smoke", choices=("smoke", "reduced", "full"),
                    help="study scale for studies/ tests (default: smoke)")
    group.addoption("--seeds", type=int, default=None,
                    help="seeds per arm (default: the scale's own)")
    group.addoption("--study-dir", default=None,
                    help="where study runs and the report go (default: a temporary directory)")
