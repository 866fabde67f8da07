"""grid_lines dataset: contents, determinism, storage, verification and error handling."""

import json
import shutil

import numpy as np
import pytest

from jaxfno.config import ConfigError, DataConfig
from jaxfno.data import (DatasetError, ProbeError, build_dataset, describe_dataset,
                         ensure_dataset, load_dataset)
from jaxfno.data import probe as probe_mod
from jaxfno.data import store
from jaxfno.data.lines import lines_amplitude

SMALL = DataConfig(train_stride=32, test_stride=32)  # 11 × 11 = 121 patterns per image: fast


@pytest.fixture(scope="module")
def small_path(tmp_path_factory):
    return build_dataset(SMALL, tmp_path_factory.mktemp("small") / "data")


@pytest.fixture
def small_copy(small_path, tmp_path):
    """A private copy of the small dataset, free to tamper with."""
    return shutil.copytree(small_path, tmp_path / "copy")


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


# ------------------------------------------------------------------ contents (default dataset)

def test_counts_shapes_dtypes(grid_lines_dataset):
    ds = grid_lines_dataset
    for split, n in ((ds.train, 6889), (ds.test, 1089)):
        for name in ("diffraction", "Y_I", "Y_phi"):
            a = getattr(split, name)
            assert a.shape == (n, 64, 64) and a.dtype == np.float32, name
        assert split.YY_full.shape == (1, 392, 392) and split.YY_full.dtype == np.complex64
        assert split.object_patches.dtype == np.complex64
        assert not split.diffraction.flags.writeable
    assert ds.train.ground_truth is None
    assert ds.test.ground_truth.shape == (330, 330)
    assert ds.test.ground_truth.dtype == np.complex64
    assert ds.probe_guess.shape == (64, 64) and ds.probe_guess.dtype == np.complex64
    assert ds.provenance["n_patterns"] == {"train": 6889, "test": 1089}


def test_norms_and_value_ranges(grid_lines_dataset):
    ds = grid_lines_dataset
    assert ds.train.norm_Y_I == pytest.approx(4.163, abs=1e-3)
    assert ds.test.norm_Y_I == pytest.approx(4.230, abs=1e-3)
    amplitude = np.abs(ds.train.YY_full[0]) * ds.train.norm_Y_I
    assert 0.5 < amplitude.min() < 0.6 and 4.7 < amplitude.max() < 5.0
    assert amplitude.mean() == pytest.approx(2.7, abs=0.1)
    phase = ds.train.Y_phi
    assert -0.72 < phase.min() < -0.69 and 0.9 < phase.max() < 0.93
    assert not ds.train.phase_is_constant and not ds.test.phase_is_constant


def test_test_patches_row_major_and_ground_truth(grid_lines_dataset):
    test = grid_lines_dataset.test
    full, patches = test.YY_full[0], test.object_patches
    for k in (0, 1, 33, 500, 1088):
        r, c = divmod(k, 33)
        np.testing.assert_allclose(patches[k],
                                   full[10 * r:10 * r + 64, 10 * c:10 * c + 64], rtol=1e-6)
    # Ground truth: the raw (un-normalised) test object, rows/cols 27…356.
    np.testing.assert_allclose(test.ground_truth, full[27:357, 27:357] * test.norm_Y_I,
                               rtol=1e-5, atol=1e-6)


def test_train_shuffled_with_pairs_aligned(grid_lines_dataset):
    train = grid_lines_dataset.train
    order = np.random.RandomState(0).permutation(6889)
    full = train.YY_full[0]
    for k in (0, 1, 4000, 6888):
        r, c = divmod(order[k], 83)
        np.testing.assert_allclose(train.Y_I[k] * np.exp(1j * train.Y_phi[k]),
                                   full[4 * r:4 * r + 64, 4 * c:4 * c + 64], rtol=1e-6)
    assert order[0] != 0


def test_lines_object_leaves_global_numpy_state_alone():
    np.random.seed(123)
    expected = np.random.uniform()
    np.random.seed(123)
    lines_amplitude(1, 1)
    assert np.random.uniform() == expected


# ------------------------------------------------------------------ probe

@pytest.mark.parametrize("make", [probe_mod.synthetic_probe, probe_mod.gaussian_probe])
def test_probe_energy_and_scale(make):
    probe = make()
    assert probe.shape == (64, 64) and probe.dtype == np.complex64
    assert probe_mod.energy_fraction(probe) >= 0.85
    mask = probe_mod.disk_mask()
    assert np.array_equal(mask, mask[::-1, ::-1]) and np.array_equal(mask, mask.T)
    assert probe_mod.probe_scale(probe) == pytest.approx(4 * np.abs(mask * probe).mean())


def test_synthetic_probe_has_phase_curvature_and_rings(grid_lines_dataset):
    from jaxfno.data.describe import phase_span

    probe = grid_lines_dataset.probe_guess
    assert phase_span(probe) > 3.0  # strongly curved, unlike a flat-phase blob
    assert phase_span(probe_mod.gaussian_probe()) < 1e-6
    row = np.abs(probe[32])
    assert row[32] < 0.5 * row.max()  # dark centre inside a bright ring
    ds = grid_lines_dataset
    np.testing.assert_allclose(ds.probe_simulated, ds.probe_guess / ds.probe_scale, rtol=1e-6)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("not_zip", "not an NPZ"),
    ("corrupt", "corrupt NPZ"),
    ("no_key", "no 'probeGuess'"),
    ("shape", r"shape \(32, 32\)"),
    ("real", "expected a complex"),
    ("nan", "non-finite"),
])
def test_probe_loader_errors(tmp_path, case, message):
    good = probe_mod.gaussian_probe()
    path = tmp_path / f"{case}.npz"
    if case == "not_zip":
        path.write_text("not an archive")
    elif case == "corrupt":
        _npz(path, probeGuess=good)
        raw = bytearray(path.read_bytes())
        raw[100:400] = b"\x00" * 300  # damage the member's header, keep the zip directory
        path.write_bytes(bytes(raw))
    elif case == "no_key":
        _npz(path, probe=good)
    elif case == "shape":
        _npz(path, probeGuess=good[:32, :32])
    elif case == "real":
        _npz(path, probeGuess=good.real)
    elif case == "nan":
        bad = good.copy()
        bad[3, 3] = np.nan
        _npz(path, probeGuess=bad)
    with pytest.raises(ProbeError, match=message) as info:
        probe_mod.load_probe_npz(path)
    assert str(path) in str(info.value)


def test_bad_probe_writes_nothing(tmp_path):
    out = tmp_path / "parent" / "data"
    with pytest.raises(ProbeError, match="does not exist"):
        build_dataset(SMALL.replace(probe=str(tmp_path / "nope.npz")), out)
    assert not out.exists() and not out.parent.exists()


def test_user_probe_file(tmp_path):
    probe = probe_mod.gaussian_probe() * np.exp(0.3j)
    path = _npz(tmp_path / "probe.npz", probeGuess=probe)
    cfg = SMALL.replace(probe=path)
    ds = ensure_dataset(cfg, tmp_path / "cache")
    np.testing.assert_array_equal(ds.probe_guess, probe.astype(np.complex64))
    assert ds.path.parent == tmp_path / "cache" and ds.path.name.startswith(cfg.config_hash() + "-")
    assert ds.provenance["probe"]["sha256"] == probe_mod.probe_sha256(probe)
    # The file changes under the same path: reuse must refuse.
    _npz(tmp_path / "probe.npz", probeGuess=probe * 2)
    with pytest.raises(DatasetError, match="different probe"):
        ensure_dataset(cfg, tmp_path / "cache")


# ------------------------------------------------------------------ config knobs

def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="nphotons"):
        DataConfig(nphotons=0)
    with pytest.raises(ConfigError, match="nphotons"):
        DataConfig(nphotons=-1.0)
    with pytest.raises(ConfigError, match="nimgs_train"):
        DataConfig(nimgs_train=0)
    with pytest.raises(ConfigError, match="nimgs_test"):
        DataConfig(nimgs_test=0)
    with pytest.raises(ConfigError, match="test_stride=65"):
        DataConfig(test_stride=65)


def test_set_phi_off_gives_zero_phase(tmp_path, small_path):
    ds = load_dataset(build_dataset(SMALL.replace(set_phi=False), tmp_path / "nophi"))
    for split in (ds.train, ds.test):
        assert split.phase_is_constant and not split.Y_phi.any()
        assert not np.angle(split.YY_full).any()
    assert not load_dataset(small_path).train.phase_is_constant


def test_several_images_and_noise_seed(tmp_path, small_path):
    ds = load_dataset(build_dataset(SMALL.replace(nimgs_train=2, nimgs_test=2), tmp_path / "two"))
    one = load_dataset(small_path)
    assert ds.train.Y_I.shape[0] == 242 and ds.test.YY_full.shape == (2, 392, 392)
    assert not np.allclose(ds.test.YY_full[0], ds.test.YY_full[1])
    # The first test image is the same draw as with one image (same stream, drawn first).
    np.testing.assert_allclose(np.abs(ds.test.YY_full[0]) * ds.test.norm_Y_I,
                               np.abs(one.test.YY_full[0]) * one.test.norm_Y_I, rtol=1e-6)
    other = load_dataset(build_dataset(SMALL.replace(noise_seed=7), tmp_path / "seed7"))
    np.testing.assert_array_equal(other.train.Y_I, one.train.Y_I)
    assert not np.array_equal(other.train.diffraction, one.train.diffraction)


# ------------------------------------------------------------------ storage

def test_builds_are_bit_identical(tmp_path, small_path):
    again = build_dataset(SMALL, tmp_path / "again")
    for name in ("train.npz", "test.npz", "provenance.json"):
        assert (again / name).read_bytes() == (small_path / name).read_bytes(), name


@pytest.mark.slow
def test_default_build_is_bit_identical(tmp_path, grid_lines_dataset_path):
    again = build_dataset(DataConfig(), tmp_path / "again")
    assert (json.loads((again / "provenance.json").read_text())["files"]
            == json.loads((grid_lines_dataset_path / "provenance.json").read_text())["files"])


def test_reuse_does_not_regenerate(small_path, monkeypatch):
    def fail(*_):
        raise AssertionError("regenerated")

    monkeypatch.setattr(store, "simulate", fail)
    assert build_dataset(SMALL, small_path) == small_path


def test_other_config_in_directory_is_refused(small_path):
    other = SMALL.replace(nphotons=1e6)
    with pytest.raises(DatasetError) as info:
        build_dataset(other, small_path)
    message = str(info.value)
    assert str(small_path) in message
    assert SMALL.config_hash() in message and other.config_hash() in message
    with pytest.raises(DatasetError, match=other.config_hash()):
        load_dataset(small_path, expected=other)


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not an empty directory"):
        build_dataset(SMALL, tmp_path / "data")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def write_then_fail(path, arrays):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, arrays)

    real_write = store._write_npz
    monkeypatch.setattr(store, "_write_npz", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(SMALL, tmp_path / "data")
    assert not (tmp_path / "data").exists() and _leftovers(tmp_path) == []


def test_empty_directory_is_filled(tmp_path):
    (tmp_path / "data").mkdir()
    path = build_dataset(SMALL, tmp_path / "data")
    assert load_dataset(path).config == SMALL and _leftovers(tmp_path) == []


def test_tampered_file_is_detected(small_copy):
    with open(small_copy / "test.npz", "r+b") as fh:
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DatasetError, match=r"test\.npz: hash mismatch"):
        load_dataset(small_copy)
    with pytest.raises(DatasetError, match="hash mismatch"):
        build_dataset(SMALL, small_copy)
    report, verified = describe_dataset(small_copy)
    assert "test.npz hash mismatch" in report and "train.npz ok" in report and not verified


def test_missing_files_are_detected(small_copy, tmp_path):
    (small_copy / "train.npz").unlink()
    with pytest.raises(DatasetError, match=r"train\.npz: missing"):
        load_dataset(small_copy)
    (small_copy / "provenance.json").write_text("{not json")
    with pytest.raises(DatasetError, match="provenance.json"):
        load_dataset(small_copy)
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="provenance.json is missing"):
        load_dataset(tmp_path / "empty")


def test_ensure_dataset_builds_then_reuses(tmp_path, monkeypatch):
    first = ensure_dataset(SMALL, tmp_path)
    assert first.path.name.startswith(SMALL.config_hash() + "-") and first.config == SMALL
    monkeypatch.setattr(store, "simulate", lambda *_: pytest.fail("regenerated"))
    second = ensure_dataset(SMALL, tmp_path)
    assert second.content_hash == first.content_hash


def test_dataset_of_other_generation_constants_is_not_reused(small_copy):
    prov = json.loads((small_copy / "provenance.json").read_text())
    prov["generator"]["segments"] = 399
    (small_copy / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(DatasetError, match="other generation constants"):
        build_dataset(SMALL, small_copy)


def test_provenance_record(small_path):
    prov = load_dataset(small_path).provenance
    assert prov["config"] == SMALL.to_dict() and prov["config_hash"] == SMALL.config_hash()
    assert prov["generator"]["segments"] == 400 and prov["generator"]["crop"] == [196, 588]
    assert set(prov["versions"]) == {"python", "numpy", "scipy", "scikit-image"}
    assert set(prov["files"]) == {"train.npz", "test.npz"}
    assert prov["photon_scale"] > 0 and prov["probe_scale"] > 0


def test_describe_dataset(grid_lines_dataset_path):
    report, verified = describe_dataset(grid_lines_dataset_path)
    assert verified
    for text in ("train.npz ok", "test.npz ok", "norm_Y_I 4.163", "norm_Y_I 4.229",
                 "6889 patterns", "energy inside r=16 0.926", "noise floor"):
        assert text in report, text
