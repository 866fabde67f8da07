"""The member axis sharded over 4 forced CPU devices, in one process or in two processes of 2
devices each (``jax.distributed``), gives the histories of the unsharded run. The one-process
side trains only (``train_members``): the final prediction and run artifacts do not depend on
the placement and cost this test a third of its time. The two-process side runs the whole
pipeline into shared run directories, as the CLI does."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxfno.config import ModelConfig, RunConfig, TrainConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.training import train_members

SEEDS = (21, 22, 23, 24)

SHARDED_RUN = textwrap.dedent("""
    import json, pathlib, sys
    import jax
    from jaxfno.config import RunConfig
    from jaxfno.data import load_dataset
    from jaxfno.training import MemberPlacement, train_members

    dataset_dir, out, configs = sys.argv[1], pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
    configs = [RunConfig.from_dict(c) for c in configs]
    assert len(jax.devices()) == 4 and MemberPlacement.for_members(4).mesh is not None
    program = train_members(configs, [out / str(k) for k in range(4)], load_dataset(dataset_dir))
    print(json.dumps([{k: m.history[k] for k in ("train_loss", "val_loss")} for m in program.members]))
""")


# One of two processes with 2 CPU devices each: the members spread over all 4 devices, and the
# pipeline (run directories bound by process 0 first, artifacts) writes into shared directories.
PROCESS_RUN = textwrap.dedent("""
    import json, pathlib, sys
    from jaxfno.processes import initialize_processes

    dataset_dir, out, configs, coordinator, process_id = sys.argv[1:6]
    initialize_processes(coordinator, 2, int(process_id))
    import jax
    from jaxfno.config import RunConfig
    from jaxfno.data import load_dataset
    from jaxfno.pipeline import run_members
    from jaxfno.training import MemberPlacement

    configs = [RunConfig.from_dict(c) for c in json.loads(configs)]
    assert (jax.device_count(), jax.local_device_count()) == (4, 2)
    assert MemberPlacement.for_members(4).spans_processes
    results = run_members(configs, [pathlib.Path(out) / str(k) for k in range(4)], load_dataset(dataset_dir))
    print(json.dumps([{k: r.history[k] for k in ("train_loss", "val_loss")} for r in results]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # CI time: minutes on 2 cores; run with -m slow
def test_sharded_members_match_unsharded(grid_lines_dataset, grid_lines_dataset_path, tmp_path):
    configs = [
        RunConfig(model=ModelConfig(arch="stable_hybrid", width=4, blocks=2, modes=4),
                  train=TrainConfig(epochs=1, train_subset=32, seed=s))
        for s in SEEDS
    ]
    unsharded = train_members(configs, [tmp_path / f"u{s}" for s in SEEDS], grid_lines_dataset,
                              execution=ExecutionConfig(member_axis="unroll")).members
    args = [str(grid_lines_dataset_path), str(tmp_path / "sharded"), json.dumps([c.to_dict() for c in configs])]
    one = subprocess.run(
        [sys.executable, "-c", SHARDED_RUN, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"})
    assert one.returncode == 0, one.stderr[-3000:]

    # Each process writes to files, not pipes: a process blocked on a full pipe would stall the
    # other in their next collective.
    coordinator = f"localhost:{_free_port()}"
    two_env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    logs = [(tmp_path / f"process{i}.out", tmp_path / f"process{i}.err") for i in range(2)]
    two = []
    for i, (out, err) in enumerate(logs):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            two.append(subprocess.Popen([sys.executable, "-c", PROCESS_RUN, str(grid_lines_dataset_path),
                                         str(tmp_path / "processes"), args[2], coordinator, str(i)],
                                        stdout=stdout, stderr=stderr, text=True, env=two_env))
    for p, (_, err) in zip(two, logs):
        assert p.wait(timeout=600) == 0, err.read_text()[-3000:]

    spreads = [json.loads(one.stdout.strip().splitlines()[-1])]
    spreads += [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]
    for spread in spreads:
        for alone, member in zip(unsharded, spread):
            for key in ("train_loss", "val_loss"):
                np.testing.assert_allclose(member[key], alone.history[key], rtol=1e-5)
    for k in range(4):  # finished runs in the shared directories
        assert (tmp_path / "processes" / str(k) / "verdict.json").exists()
