"""The member axis sharded over 4 forced CPU devices gives the histories of the unsharded run.
Both sides train only (``train_members``): the final prediction and run artifacts do not depend
on the placement and cost this test a third of its time."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from jaxfno.config import ModelConfig, RunConfig, TrainConfig
from jaxfno.training.loop import train_members

SEEDS = (21, 22, 23, 24)

SHARDED_RUN = textwrap.dedent("""
    import json, pathlib, sys
    import jax
    from jaxfno.config import RunConfig
    from jaxfno.data import load_dataset
    from jaxfno.training.loop import MemberPlacement, train_members

    dataset_dir, out, configs = sys.argv[1], pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
    configs = [RunConfig.from_dict(c) for c in configs]
    assert len(jax.devices()) == 4 and MemberPlacement.for_members(4).mesh is not None
    program = train_members(configs, [out / str(k) for k in range(4)], load_dataset(dataset_dir))
    print(json.dumps([{k: m.history[k] for k in ("train_loss", "val_loss")} for m in program.members]))
""")


def test_sharded_members_match_unsharded(grid_lines_dataset, grid_lines_dataset_path, tmp_path):
    configs = [
        RunConfig(model=ModelConfig(arch="stable_hybrid", width=4, blocks=2, modes=4),
                  train=TrainConfig(epochs=1, train_subset=32, seed=s))
        for s in SEEDS
    ]
    unsharded = train_members(configs, [tmp_path / f"u{s}" for s in SEEDS], grid_lines_dataset,
                              member_axis="unroll").members
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_RUN, str(grid_lines_dataset_path), str(tmp_path / "sharded"),
         json.dumps([c.to_dict() for c in configs])],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(proc.stdout.strip().splitlines()[-1])
    for alone, spread in zip(unsharded, sharded):
        for key in ("train_loss", "val_loss"):
            np.testing.assert_allclose(spread[key], alone.history[key], rtol=1e-5)
