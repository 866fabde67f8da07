"""Shared fixtures: the default grid_lines dataset, built once per test session."""

import pytest

from jaxfno.config import DataConfig
from jaxfno.data import build_dataset, load_dataset


@pytest.fixture(scope="session")
def grid_lines_dataset_path(tmp_path_factory):
    """Directory of the default (1 + 1 image) dataset. Shared: copy it before tampering."""
    return build_dataset(DataConfig(), tmp_path_factory.mktemp("grid_lines") / "data")


@pytest.fixture(scope="session")
def grid_lines_dataset(grid_lines_dataset_path):
    """The default dataset, loaded and verified (arrays are read-only)."""
    return load_dataset(grid_lines_dataset_path, expected=DataConfig())
