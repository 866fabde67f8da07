"""Illumination probes (SPEC §1.3) and the simulation normalisation κ.

Synthetic default ("synthetic"), a defocused circular aperture seen at the sample plane::

    k        = integer frequency index − 32 (rows and cols of a 64 × 64 pupil grid)
    pupil(k) = 1[|k|² < PUPIL_RADIUS²] · exp(i·π·DEFOCUS·|k|²)
    P        = fftshift(fft2(ifftshift(pupil), norm="ortho")),  then P /= max|P|

PUPIL_RADIUS = 10 and DEFOCUS = 0.01875: the geometric (ray-optics) spot radius is
DEFOCUS·PUPIL_RADIUS·64 = 12 px, with Fresnel rings inside it (a dark centre and a bright ring
at r ≈ 4 px), weak aliased side lobes outside, and a curved, roughly quadratic phase (≈ 10 rad
of unwrapped range along the central row inside r = 16). 92.6 % of |P|² lies inside the r = 16
disk. The centre sits at pixel (32, 32), where the FFT puts it; the κ mask is centred at
(31.5, 31.5) as the SPEC fixes.

"gaussian": P = exp(−|x|² / (2·GAUSSIAN_SIGMA²)) with flat phase, centred at (32, 32);
98.2 % of |P|² inside r = 16. A featureless probe, for studying how probe structure matters.

Anything else is a path to an NPZ file holding a 64 × 64 complex, finite ``probeGuess``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile

import numpy as np

from jaxfno.data.errors import ProbeError

N = 64
PUPIL_RADIUS = 10.0
DEFOCUS = 0.01875
GAUSSIAN_SIGMA = 8.0
MASK_RADIUS = 16.0
PROBE_KEY = "probeGuess"


def _centred_grid() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(N) - N // 2
    return np.meshgrid(x, x, indexing="ij")


def synthetic_probe() -> np.ndarray:
    """The default defocused-aperture probe (formula in the module docstring), complex64."""
    ky, kx = _centred_grid()
    k2 = kx**2 + ky**2
    pupil = (k2 < PUPIL_RADIUS**2) * np.exp(1j * np.pi * DEFOCUS * k2)
    probe = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(pupil), norm="ortho"))
    return (probe / np.abs(probe).max()).astype(np.complex64)


def gaussian_probe() -> np.ndarray:
    """Smooth flat-phase Gaussian blob, complex64."""
    y, x = _centred_grid()
    return np.exp(-(x**2 + y**2) / (2 * GAUSSIAN_SIGMA**2)).astype(np.complex64)


def load_probe_npz(path: str | os.PathLike) -> np.ndarray:
    """Read and validate ``probeGuess`` from an NPZ file; every failure names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ProbeError(f"probe file {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ProbeError(f"probe file {path!r} is not an NPZ (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if PROBE_KEY not in npz.files:
                raise ProbeError(
                    f"probe file {path!r} has no {PROBE_KEY!r} array (keys: {npz.files})")
            probe = npz[PROBE_KEY]
    except ProbeError:
        raise
    except Exception as exc:  # a damaged member: zlib, format or pickle errors
        raise ProbeError(f"probe file {path!r} is a corrupt NPZ archive: {exc}") from exc
    if probe.shape != (N, N):
        raise ProbeError(
            f"probe file {path!r}: {PROBE_KEY} has shape {probe.shape}, expected ({N}, {N})")
    if not np.iscomplexobj(probe):
        raise ProbeError(
            f"probe file {path!r}: {PROBE_KEY} has dtype {probe.dtype}, expected a complex array")
    if not np.all(np.isfinite(probe)):
        raise ProbeError(f"probe file {path!r}: {PROBE_KEY} contains non-finite values")
    return probe.astype(np.complex64)


def resolve_probe(spec: str) -> tuple[np.ndarray, str]:
    """``DataConfig.probe`` → (64 × 64 complex64 probe, one-line description)."""
    if spec == "synthetic":
        return synthetic_probe(), (
            f"synthetic defocused circular pupil (PUPIL_RADIUS={PUPIL_RADIUS}, "
            f"DEFOCUS={DEFOCUS}), propagated by FFT, max|P|=1")
    if spec == "gaussian":
        return gaussian_probe(), f"gaussian flat-phase blob (GAUSSIAN_SIGMA={GAUSSIAN_SIGMA})"
    probe = load_probe_npz(spec)
    return probe, f"{PROBE_KEY} from {os.path.abspath(spec)}"


def disk_mask(radius: float = MASK_RADIUS) -> np.ndarray:
    """Boolean disk centred at (31.5, 31.5): pixel centres arange(64) − 32 + 0.5, strict <."""
    c = np.arange(N) - N // 2 + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return x**2 + y**2 < radius**2


def probe_scale(probe: np.ndarray) -> float:
    """κ = 4 · mean over 64 × 64 of |M·P| (SPEC §1.3); P_sim = P / κ."""
    kappa = 4.0 * float(np.mean(np.abs(disk_mask() * probe.astype(np.complex128))))
    if not kappa > 0:
        raise ProbeError("probe has zero amplitude inside the central r=16 disk (κ = 0)")
    return kappa


def energy_fraction(probe: np.ndarray, radius: float = MASK_RADIUS) -> float:
    """Fraction of Σ|P|² inside the disk of the given radius."""
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    return float(intensity[disk_mask(radius)].sum() / intensity.sum())


def probe_sha256(probe: np.ndarray) -> str:
    """SHA-256 of the complex64 probe's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(probe, np.complex64).tobytes()).hexdigest()
