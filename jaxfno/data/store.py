"""Dataset files: deterministic NPZ writing, atomic publication, verified loading (SPEC §1.7).

A dataset directory holds ``train.npz``, ``test.npz`` and ``provenance.json``; the provenance
records the SHA-256 of each NPZ, and every load re-verifies them. NPZ members are written with a
fixed timestamp so that identical data give identical bytes (``np.savez`` stamps the current
time, which would make every build hash differently). Slightly over ~300 lines: writing and
verifying are one format, kept together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import shutil
import tempfile
import zipfile
from typing import Any, Optional

import numpy as np
import scipy
import skimage

from jaxfno.config import ConfigError, DataConfig
from jaxfno.data.errors import DatasetError
from jaxfno.data.probe import energy_fraction, probe_sha256, resolve_probe
from jaxfno.data.simulate import GENERATOR, simulate

FORMAT_VERSION = 1
PROVENANCE = "provenance.json"
SPLIT_FILES = {"train": "train.npz", "test": "test.npz"}
_KEYS = ("diffraction", "Y_I", "Y_phi", "YY_full", "probeGuess", "probe_simulated", "norm_Y_I")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split; arrays are read-only. ``ground_truth`` is the test object (330 × 330) or None."""

    diffraction: np.ndarray  # (n, 64, 64) float32, measured amplitude X
    Y_I: np.ndarray  # (n, 64, 64) float32, normalised amplitude Ŷ
    Y_phi: np.ndarray  # (n, 64, 64) float32, phase Φ
    norm_Y_I: float  # ν
    YY_full: np.ndarray  # (nimgs, 392, 392) complex64, normalised full object
    ground_truth: Optional[np.ndarray] = None  # test only: raw (un-normalised) object, complex64

    @property
    def object_patches(self) -> np.ndarray:
        """Ŷ·exp(iΦ), (n, 64, 64) complex64."""
        return (self.Y_I * np.exp(1j * self.Y_phi)).astype(np.complex64)

    @property
    def phase_is_constant(self) -> bool:
        """True when the phase target carries no information (set_phi off)."""
        return bool(self.Y_phi.min() == self.Y_phi.max())


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    train: Split
    test: Split
    probe_guess: np.ndarray  # (64, 64) complex64, the probe as given
    probe_scale: float  # κ
    probe_simulated: np.ndarray  # probe_guess / κ, complex64: the forward-model probe
    photon_scale: float  # s
    config: DataConfig
    provenance: dict
    path: pathlib.Path

    @property
    def content_hash(self) -> str:
        """SHA-256 over the files' hashes: one id for "byte-identical data"."""
        return self.provenance["dataset_sha256"]


# ----------------------------------------------------------------------------- writing

def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed NPZ (what np.savez writes) with fixed member metadata, fsynced."""
    with open(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance(cfg, probe, description, train, test, scalars, files) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "generator": GENERATOR,
        "probe": {
            "description": description,
            "sha256": probe_sha256(probe),
            "max_abs": float(np.abs(probe).max()),
            "energy_fraction_r16": energy_fraction(probe),
        },
        "probe_scale": scalars["probe_scale"],
        "photon_scale": scalars["photon_scale"],
        "norm_Y_I": {"train": float(train["norm_Y_I"]), "test": float(test["norm_Y_I"])},
        "n_patterns": {"train": len(train["Y_I"]), "test": len(test["Y_I"])},
        "noise": "X = sqrt(Poisson(s^2 |F|^2)) / s; numpy default_rng(SeedSequence(noise_seed)"
                 ".spawn(2)) for [train, test]",
        "train_order": "shuffled once by RandomState(0).permutation; test row-major",
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__, "scikit-image": skimage.__version__},
        "files": files,
        "dataset_sha256": hashlib.sha256(
            "".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest(),
    }


def _publish(out: pathlib.Path, cfg, probe, description, train, test, scalars) -> pathlib.Path:
    """Write into a temp dir next to ``out``, fsync, then rename it to ``out`` in one step.

    On any failure the temp dir is removed, so ``out`` is either absent/untouched or complete.
    If a concurrent builder published ``out`` first, its dataset is verified and reused.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        files = {}
        for name, arrays in ((SPLIT_FILES["train"], train), (SPLIT_FILES["test"], test)):
            _write_npz(tmp / name, arrays)
            files[name] = _sha256(tmp / name)
        prov = _provenance(cfg, probe, description, train, test, scalars, files)
        with open(tmp / PROVENANCE, "w") as fh:
            json.dump(prov, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        try:
            os.replace(tmp, out)  # atomic; replaces only a missing or empty directory
        except OSError:
            if not (out / PROVENANCE).is_file():
                raise
            _check_reusable(out, cfg, probe)  # another process finished the same build first
            shutil.rmtree(tmp)
            return out
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- verifying

def read_provenance(path: pathlib.Path) -> dict[str, Any]:
    """The parsed provenance.json of a dataset directory (DatasetError if absent or invalid)."""
    file = path / PROVENANCE
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist or is not a directory")
    if not file.is_file():
        raise DatasetError(f"{path} holds no dataset: {PROVENANCE} is missing")
    try:
        prov = json.loads(file.read_text())
    except ValueError as exc:
        raise DatasetError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(prov, dict) or not {"config_hash", "files"} <= prov.keys():
        raise DatasetError(f"{file} is not a dataset provenance record")
    return prov


def file_status(path: pathlib.Path, prov: dict) -> dict[str, str]:
    """Per NPZ: "ok", "missing" or "hash mismatch"."""
    status = {}
    for name, expected in sorted(prov["files"].items()):
        file = path / name
        if not file.is_file():
            status[name] = "missing"
        else:
            status[name] = "ok" if _sha256(file) == expected else "hash mismatch"
    return status


def _verify(path: pathlib.Path, prov: dict) -> None:
    missing = set(SPLIT_FILES.values()) - set(prov["files"])
    bad = {name: s for name, s in file_status(path, prov).items() if s != "ok"}
    bad.update({name: "not listed in provenance" for name in sorted(missing)})
    if bad:
        detail = "; ".join(f"{path / name}: {s}" for name, s in bad.items())
        raise DatasetError(f"dataset {path} failed verification: {detail}")


def _check_reusable(out: pathlib.Path, cfg: DataConfig, probe: np.ndarray) -> None:
    prov = read_provenance(out)
    if prov["config_hash"] != cfg.config_hash():
        raise DatasetError(
            f"{out} holds a dataset of config {prov['config_hash']}, not of the requested config "
            f"{cfg.config_hash()}; use another directory")
    if prov.get("generator") != GENERATOR:
        raise DatasetError(
            f"{out} was made with other generation constants ({prov.get('generator')}) than this "
            f"code's ({GENERATOR}); delete the directory to rebuild")
    if prov.get("probe", {}).get("sha256") != probe_sha256(probe):
        raise DatasetError(
            f"{out} was built with a different probe than {cfg.probe!r} holds now; "
            "delete the directory to rebuild")
    try:
        _verify(out, prov)
    except DatasetError as exc:
        raise DatasetError(f"{exc}; delete the directory to rebuild") from None


# ----------------------------------------------------------------------------- reading

def _load_arrays(file: pathlib.Path, with_truth: bool) -> dict[str, np.ndarray]:
    """All arrays of one split file, checked and made read-only."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # a verified hash makes this unlikely; name the file regardless
        raise DatasetError(f"{file} is not a readable NPZ archive: {exc}") from exc
    needed = _KEYS + (("YY_ground_truth",) if with_truth else ())
    absent = [key for key in needed if key not in arrays]
    if absent:
        raise DatasetError(f"{file} lacks the array(s) {absent}")
    n = len(arrays["Y_I"])
    for key in ("diffraction", "Y_I", "Y_phi"):
        if arrays[key].shape != (n, 64, 64) or arrays[key].dtype != np.float32:
            raise DatasetError(f"{file}: {key} is {arrays[key].dtype}{arrays[key].shape}, "
                               f"expected float32({n}, 64, 64)")
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def _split(arrays: dict[str, np.ndarray]) -> Split:
    return Split(diffraction=arrays["diffraction"], Y_I=arrays["Y_I"], Y_phi=arrays["Y_phi"],
                 norm_Y_I=float(arrays["norm_Y_I"]), YY_full=arrays["YY_full"],
                 ground_truth=arrays.get("YY_ground_truth"))


def read_unverified(path: pathlib.Path, prov: dict) -> Dataset:
    """Read a dataset without re-hashing its files (callers verify first)."""
    try:
        config = DataConfig.from_dict(prov["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path / PROVENANCE}: invalid config record: {exc}") from exc
    if config.config_hash() != prov["config_hash"]:
        raise DatasetError(f"{path / PROVENANCE}: config hashes to {config.config_hash()}, "
                           f"but the record says {prov['config_hash']}")
    train = _load_arrays(path / SPLIT_FILES["train"], with_truth=False)
    test = _load_arrays(path / SPLIT_FILES["test"], with_truth=True)
    return Dataset(train=_split(train), test=_split(test), probe_guess=train["probeGuess"],
                   probe_scale=float(prov["probe_scale"]),
                   probe_simulated=train["probe_simulated"],
                   photon_scale=float(prov["photon_scale"]), config=config, provenance=prov,
                   path=path)


def load_dataset(path, expected: Optional[DataConfig] = None) -> Dataset:
    """Load a dataset after verifying every file's SHA-256 (and the config, if ``expected``)."""
    path = pathlib.Path(path)
    prov = read_provenance(path)
    if expected is not None and expected.config_hash() != prov["config_hash"]:
        raise DatasetError(f"{path} holds a dataset of config {prov['config_hash']}, "
                           f"expected {expected.config_hash()}")
    _verify(path, prov)
    return read_unverified(path, prov)


# ----------------------------------------------------------------------------- building

def build_dataset(cfg: DataConfig, out_dir) -> pathlib.Path:
    """Generate the dataset into ``out_dir``, or reuse the verified one already there.

    Raises DatasetError when ``out_dir`` holds a different config, a corrupt dataset, or other
    files. The probe is resolved first, so a bad probe fails before anything is written.
    """
    out = pathlib.Path(out_dir)
    probe, description = resolve_probe(cfg.probe)
    if (out / PROVENANCE).is_file():
        _check_reusable(out, cfg, probe)
        return out
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not an empty directory, but holds no dataset")
    train, test, scalars = simulate(cfg, probe)
    return _publish(out, cfg, probe, description, train, test, scalars)


def ensure_dataset(cfg: DataConfig, cache_root) -> Dataset:
    """Build ``cache_root/<config hash>-<generator hash>/`` if missing, then load it
    (verified): a change of the generation constants gets a dataset of its own."""
    generator = hashlib.sha256(json.dumps(GENERATOR, sort_keys=True).encode()).hexdigest()[:8]
    path = build_dataset(cfg, pathlib.Path(cache_root) / f"{cfg.config_hash()}-{generator}")
    return load_dataset(path, expected=cfg)
