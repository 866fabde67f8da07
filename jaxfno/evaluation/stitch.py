"""Stitching of test patches into the evaluation field of view (SPEC §5 step 2)."""

from __future__ import annotations


def stitch(patches, grid: int, border: int, stride: int):
    """Tile the central ``stride × stride`` of each patch, row-major, without overlap.

    ``patches``: (grid², N, N) array (NumPy or JAX, any dtype) in the row-major order of the
    test grid, whose patch ``(i, j)`` starts at object pixel ``(stride·i, stride·j)``. Keeps
    rows/cols ``border : border + stride`` of each patch, so the result (grid·stride square)
    covers object rows/cols ``border … border + grid·stride − 1``, i.e. the ground truth of SPEC
    §1.6 (``jaxfno.data.stitch_geometry`` gives grid and border; 33 and 27 at the benchmark's
    stride 10: 330 × 330, rows/cols 27 … 356). Pure reshapes: jit-able.
    """
    if patches.ndim != 3 or patches.shape[0] != grid * grid:
        raise ValueError(f"stitch: expected ({grid * grid}, N, N) patches, got {patches.shape}")
    if border + stride > min(patches.shape[1:]):
        raise ValueError(f"stitch: border {border} + stride {stride} exceeds patch {patches.shape[1:]}")
    centre = patches[:, border:border + stride, border:border + stride]
    tiles = centre.reshape(grid, grid, stride, stride).transpose(0, 2, 1, 3)
    return tiles.reshape(grid * stride, grid * stride)
