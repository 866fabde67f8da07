"""grid_lines dataset (SPEC §1): generation on the host, verified storage, loading.

Public API: :func:`build_dataset`, :func:`load_dataset`, :func:`ensure_dataset`,
:class:`Dataset`, :class:`Split`, :class:`DatasetError`, :func:`describe_dataset`,
:func:`stitch_geometry`.
"""

from jaxfno.data.describe import describe_dataset, noise_floor
from jaxfno.data.errors import DatasetError, ProbeError
from jaxfno.data.store import (Dataset, Split, build_dataset, ensure_dataset,
                               load_dataset)
from jaxfno.data.simulate import stitch_geometry

__all__ = ["Dataset", "DatasetError", "ProbeError", "Split", "build_dataset",
           "describe_dataset", "ensure_dataset", "load_dataset", "noise_floor", "stitch_geometry"]
