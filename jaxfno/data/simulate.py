"""Patches, diffraction and noise (SPEC §1.4–§1.6), NumPy on the host.

``simulate(cfg, probe)`` returns the arrays of ``train.npz`` and ``test.npz`` plus the scalars
the provenance records. The exit wave is formed from the float32 ``Y_I``/``Y_phi`` and the
complex64 ``probe_simulated`` that are stored, so the saved files alone reproduce the noiseless
diffraction exactly (the FFT itself runs in complex128).
"""

from __future__ import annotations

import numpy as np

from jaxfno.config import DataConfig
from jaxfno.data.lines import (CANVAS, CROP, N_SEGMENTS, OBJECT_SIZE, SMOOTHING, TEST_SEED, TRAIN_SEED,
                               lines_amplitude, lines_phase)
from jaxfno.data.probe import probe_scale

PATCH = 64
SHUFFLE_SEED = 0  # upstream: sklearn shuffle(random_state=0) of the train patterns

# The benchmark's fixed generation constants (not in DataConfig): recorded in every dataset's
# provenance, and a cached dataset made with other ones is not reused.
GENERATOR = {"canvas": CANVAS, "segments": N_SEGMENTS, "smoothing": [list(ws) for ws in SMOOTHING],
             "crop": [CROP.start, CROP.stop], "object_seeds": {"train": TRAIN_SEED, "test": TEST_SEED},
             "patch": PATCH, "train_shuffle_seed": SHUFFLE_SEED}
_CHUNK = 512  # patterns per FFT/Poisson chunk (bounds complex128 temporaries to ~34 MB)


def n_positions(stride: int, size: int = OBJECT_SIZE) -> int:
    """Patch origins per axis: 0, stride, … ≤ size − 64."""
    return (size - PATCH) // stride + 1


def extract_patches(images: np.ndarray, stride: int, scale: float = 1.0) -> np.ndarray:
    """Exact 64 × 64 crops on a regular grid, image by image, row-major, as float32 / scale."""
    k = n_positions(stride, images.shape[-1])
    out = np.empty((images.shape[0] * k * k, PATCH, PATCH), np.float32)
    for i, image in enumerate(images):
        view = np.lib.stride_tricks.sliding_window_view(image, (PATCH, PATCH))[::stride, ::stride]
        for r in range(k):  # one patch row at a time keeps the float64 temporaries small
            start = (i * k + r) * k
            out[start:start + k] = view[r] / scale
    return out


def patch_max_mean(images: np.ndarray, stride: int) -> float:
    """ν = mean over all patches of the split of max(patch amplitude)."""
    maxima = [np.lib.stride_tricks.sliding_window_view(im, (PATCH, PATCH))[::stride, ::stride]
              .max(axis=(2, 3)) for im in images]
    return float(np.mean(maxima))


def exit_far_field(y_i: np.ndarray, y_phi: np.ndarray, probe_sim: np.ndarray) -> np.ndarray:
    """F(Ŷ·exp(iΦ)·P_sim) = fftshift(fft2(ψ, norm="ortho")) over the last two axes, complex128."""
    psi = y_i.astype(np.float64) * np.exp(1j * y_phi.astype(np.float64)) * probe_sim
    return np.fft.fftshift(np.fft.fft2(psi, norm="ortho"), axes=(-2, -1))


def photon_scale(y_i: np.ndarray, probe_sim: np.ndarray, nphotons: float) -> float:
    """s = sqrt(nphotons / mean_p Σ_xy |Ŷ_p·P_sim|²)."""
    p2 = np.abs(probe_sim.astype(np.complex128)) ** 2
    energy = sum(np.einsum("pxy,xy->", y_i[i:i + _CHUNK].astype(np.float64) ** 2, p2)
                 for i in range(0, len(y_i), _CHUNK)) / len(y_i)
    return float(np.sqrt(nphotons / energy))


def noisy_diffraction(y_i, y_phi, probe_sim, scale: float, rng: np.random.Generator):
    """X = sqrt(Poisson(s²|F|²)) / s as float32, chunk by chunk in pattern order."""
    out = np.empty(y_i.shape, np.float32)
    for i in range(0, len(y_i), _CHUNK):
        rate = scale**2 * np.abs(exit_far_field(y_i[i:i + _CHUNK], y_phi[i:i + _CHUNK],
                                                probe_sim)) ** 2
        out[i:i + _CHUNK] = np.sqrt(rng.poisson(rate)) / scale
    return out


def stitch_geometry(stride: int, size: int = OBJECT_SIZE) -> tuple[int, int]:
    """(grid, border) of the test patches of a size × size object at ``stride``: patches per
    axis, and the offset of the central stride × stride core that stitching keeps of each
    (33, 27 for the benchmark's stride 10)."""
    return n_positions(stride, size), (PATCH - stride) // 2


def ground_truth(obj: np.ndarray, stride: int) -> np.ndarray:
    """Region the stitched central stride × stride patch cores cover (SPEC §1.6).

    For stride 10: border (64 − 10)/2 = 27, 33 patches × 10 → rows/cols 27…356, 330 × 330 (the
    same as dropping the last 8 rows/cols and clipping 27 on each side).
    """
    grid, border = stitch_geometry(stride, obj.shape[-1])
    end = border + grid * stride
    return obj[border:end, border:end]


def _split(nimgs: int, seed: int, stride: int, set_phi: bool) -> tuple[dict, np.ndarray]:
    amplitude = lines_amplitude(nimgs, seed)
    phase = lines_phase(amplitude, set_phi)
    norm = patch_max_mean(amplitude, stride)
    arrays = {
        "Y_I": extract_patches(amplitude, stride, norm),
        "Y_phi": extract_patches(phase, stride),
        "YY_full": ((amplitude / norm) * np.exp(1j * phase)).astype(np.complex64),
        "norm_Y_I": np.array(norm),
    }
    return arrays, amplitude[0] * np.exp(1j * phase[0])


def simulate(cfg: DataConfig, probe: np.ndarray) -> tuple[dict, dict, dict]:
    """→ (train arrays, test arrays, scalars {probe_scale, photon_scale}) for the NPZ files."""
    kappa = probe_scale(probe)
    probe_sim = (probe.astype(np.complex128) / kappa).astype(np.complex64)
    train, _ = _split(cfg.nimgs_train, TRAIN_SEED, cfg.train_stride, cfg.set_phi)
    test, test_object = _split(cfg.nimgs_test, TEST_SEED, cfg.test_stride, cfg.set_phi)
    test["YY_ground_truth"] = ground_truth(test_object, cfg.test_stride).astype(np.complex64)

    scale = photon_scale(train["Y_I"], probe_sim, cfg.nphotons)  # train split only
    train_seq, test_seq = np.random.SeedSequence(cfg.noise_seed).spawn(2)
    for arrays, seq in ((train, train_seq), (test, test_seq)):
        arrays["diffraction"] = noisy_diffraction(arrays["Y_I"], arrays["Y_phi"], probe_sim,
                                                  scale, np.random.default_rng(seq))
        arrays["probeGuess"] = probe.astype(np.complex64)
        arrays["probe_simulated"] = probe_sim

    # Shuffle the train patterns once, pairs kept aligned; test stays row-major for stitching.
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(train["Y_I"]))
    for key in ("diffraction", "Y_I", "Y_phi"):
        train[key] = train[key][order]
    return train, test, {"probe_scale": kappa, "photon_scale": scale}
