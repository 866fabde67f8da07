"""Where a result came from: the code's git commit and the library versions."""

from __future__ import annotations

import pathlib
import platform
import subprocess
import sys
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parents[1]


def code_commit() -> str | None:
    """The git commit of the jaxfno checkout (``+dirty`` when ``jaxfno/`` has uncommitted
    changes), or None outside a git checkout (an installed wheel, the GPU machine's copy)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "jaxfno"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def host_cpu() -> str:
    """The host's CPU model (rounding can differ between CPU models, so runs record it)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "scikit-image")
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": host_cpu()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
