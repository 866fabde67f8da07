"""benchmarks/gpu_check.sh runs end to end at toy size (its --dry-run mode) on whatever device JAX
sees: the CPU in CI, the GPU when the suite runs on a GPU machine."""

import io
import os
import pathlib
import subprocess
import sys
import tarfile

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # CI time: minutes on 2 cores; run with -m slow
def test_gpu_check_dry_run(tmp_path):
    out, archive = tmp_path / "gpu", tmp_path / "archive"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}  # no outer run's settings
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
                          env={**env, "PYTHON": sys.executable, "GPU_CHECK_ARCHIVE": str(archive),
                               "FACTORIAL_DIR": str(tmp_path / "factorial_runs")},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = sorted(archive.glob("gpu.tar.xz.part_*"))
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:xz") as packed:
        names = packed.getnames()  # OUT and the factorial's runs, without checkpoints
    assert any("factorial_runs/asrun/stable/seed" in n for n in names)
    assert any(n.endswith("gpu/bench_step.json") for n in names)
    assert not any("/checkpoints/" in n for n in names)
    summary = (out / "summary.md").read_text()
    device = jax.devices()[0]
    assert summary.startswith(f"# GPU check on {device.platform}:{getattr(device, 'device_kind', '')}")
    for name in ("env.json", "bench_step.json", "bench_seeds.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "arm_1seed" / "report" / "summary.md").exists()
    assert "## arm_1seed" in summary and "setup" in summary
    # The factorial's chunk (in the dry run one asrun run), reported as far as it got.
    factorial = (out / "factorial" / "summary.md").read_text()
    assert "| stable | asrun |" in factorial and (out / "factorial" / "outcomes.md").exists()


def test_gpu_check_refuses_a_device_factorial_without_an_archive(tmp_path):
    """On a device the factorial's runs come back only packed: without GPU_CHECK_ARCHIVE the script
    stops before writing anything (nothing of the project runs: the check precedes every stage)."""
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                          env={**env, "PYTHON": "false", "GPU_CHECK_STAGES": "env factorial"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs GPU_CHECK_ARCHIVE=DIR" in proc.stderr
    assert not out.exists()


def test_gpu_check_passes_a_chunks_config_changes_to_every_run(tmp_path):
    """FACTORIAL_SET (e.g. runs trained beyond the recipe) reaches the factorial's study command as
    --set items, last so that they win, and only with a folder of their own named (nothing of the
    project runs: PYTHON records its arguments)."""
    log, fake = tmp_path / "argv.txt", tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "FACTORIAL_"))}
    chunk = {"PYTHON": str(fake), "GPU_CHECK_STAGES": "factorial", "GPU_CHECK_ARCHIVE": "none", "CONV3X3": "im2col",
             "FACTORIAL_ARMS": "stable stable_lowlr", "FACTORIAL_CONDITIONS": "asrun", "FACTORIAL_SEEDS": "6",
             "FACTORIAL_SET": "train.epochs=40  optim.grad_clip=0.5"}

    def gpu_check(**more):
        return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "gpu")],
                              env={**env, **chunk, **more}, capture_output=True, text=True, timeout=60)

    refused = gpu_check()  # the default folder holds the recipe's runs: another config is refused there
    assert refused.returncode == 2 and "name a folder of their own with FACTORIAL_DIR" in refused.stderr
    assert not (tmp_path / "gpu").exists() and not log.exists()
    proc = gpu_check(FACTORIAL_DIR=str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    study = [line for line in log.read_text().splitlines() if line.startswith("-m jaxfno study stage-a")]
    assert study == [f"-m jaxfno study stage-a --scale full --conditions asrun --seeds 6 --arms stable stable_lowlr "
                     f"--set execution.conv3x3=im2col --set train.epochs=40 --set optim.grad_clip=0.5 "
                     f"--out {tmp_path / 'runs'}"]
