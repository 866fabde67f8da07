"""Human-readable dataset summary for ``jaxfno data show DIR``."""

from __future__ import annotations

import pathlib

import numpy as np

from jaxfno.data.probe import energy_fraction
from jaxfno.data.store import Split, file_status, read_provenance, read_unverified


def noise_floor(split: Split, probe_sim: np.ndarray, batch: int = 1024) -> float:
    """MAE loss of the TRUE object patches through the forward model vs the noisy X.

    The loss a perfect generator would reach: what Poisson noise alone contributes.
    """
    import jax
    import jax.numpy as jnp

    from jaxfno import physics

    amplitude = jax.jit(physics.predicted_amplitude)
    objects = split.object_patches
    probe = jnp.asarray(probe_sim)
    pred = np.concatenate([np.asarray(amplitude(jnp.asarray(objects[i:i + batch]), probe))
                           for i in range(0, len(objects), batch)])
    mask = jnp.ones(len(pred), jnp.float32)
    return float(physics.loss_terms(jnp.asarray(pred), jnp.asarray(split.diffraction), mask, "mae"))


def _array_line(name: str, a: np.ndarray) -> str:
    if np.iscomplexobj(a):
        amp, phase = np.abs(a), np.angle(a)
        rng = (f"|.| {amp.min():.4g}..{amp.max():.4g}, "
               f"phase {phase.min():+.3f}..{phase.max():+.3f}")
    else:
        rng = f"{a.min():.4g}..{a.max():.4g}, mean {a.mean():.4g}"
    return f"    {name:<16} {str(a.dtype):<10} {str(a.shape):<18} {rng}"


def describe_dataset(path) -> tuple[str, bool]:
    """Shapes, ranges, probe, scales, noise floor and per-file hash status of a dataset dir,
    and whether every file verified (the contents are summarised only then)."""
    path = pathlib.Path(path)
    prov = read_provenance(path)
    status = file_status(path, prov)
    lines = [f"dataset {path}", f"  config {prov['config_hash']}: {prov.get('config')}",
             "  files: " + ", ".join(f"{k} {v}" for k, v in status.items())]
    if any(s != "ok" for s in status.values()):
        lines.append("  (contents not summarised: verification failed)")
        return "\n".join(lines), False
    ds = read_unverified(path, prov)
    probe = ds.probe_guess
    lines += [
        f"  probe: {prov['probe']['description']}",
        f"    |P| max {np.abs(probe).max():.4g}, energy inside r=16 {energy_fraction(probe):.3f}, "
        f"phase range over the central row inside r=16 (unwrapped) {phase_span(probe):.3f} rad",
        f"  probe_scale κ {ds.probe_scale:.6g}, photon_scale s {ds.photon_scale:.6g}",
    ]
    for name, split in (("train", ds.train), ("test", ds.test)):
        lines.append(f"  {name}: {len(split.Y_I)} patterns, norm_Y_I {split.norm_Y_I:.6f}, "
                     f"phase {'CONSTANT' if split.phase_is_constant else 'varies'}, noise floor "
                     f"(MAE of true objects) {noise_floor(split, ds.probe_simulated):.3e}")
        arrays = {"diffraction": split.diffraction, "Y_I": split.Y_I, "Y_phi": split.Y_phi,
                  "YY_full": split.YY_full}
        if split.ground_truth is not None:
            arrays["YY_ground_truth"] = split.ground_truth
        lines += [_array_line(k, v) for k, v in arrays.items()]
    return "\n".join(lines), True


def phase_span(probe: np.ndarray) -> float:
    """max − min of the unwrapped phase along the central row, |x| < 16: the phase curvature."""
    row = np.unwrap(np.angle(probe[probe.shape[0] // 2, 16:49].astype(np.complex128)))
    return float(row.max() - row.min())
