"""Study throughput (``jaxfno bench study``): seed-runs per hour at a scale, measured side by side in one process.

Three ways to run K seeds of `stable` in a condition (default `asrun`), each for a truncated horizon of
``epochs`` epochs (the first epochs of the real runs) and extrapolated to the scale's length
with the steady per-epoch time (epochs after the first, which compiles):

* ``together``: the K seeds as members of one compiled program (what a study does);
* ``sequential``: K single-member runs one after another (each its own program);
* ``torch``: the PyTorch eager twin doing the same run (same model, batches, batch gain, Adam,
  a validation pass over the test split per epoch), one seed.
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import numpy as np

from jaxfno.data import Dataset
from jaxfno.execution import ExecutionConfig
from jaxfno.pipeline import run_members
from jaxfno.study import stage_a


def _jax_runs(configs, dataset: Dataset, root: pathlib.Path, together: bool,
              execution: ExecutionConfig) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    if together:
        results = run_members(configs, [root / f"m{k}" for k in range(len(configs))], dataset, execution=execution)
    else:
        results = [run_members([c], [root / f"s{k}"], dataset, execution=execution)[0]
                   for k, c in enumerate(configs)]
    return time.perf_counter() - start, [r.history for r in results]


def _steady_epoch(histories: list[dict]) -> float:
    """Median wall time of an epoch after the first (the program's epochs, shared by its members)."""
    seconds = [s for h in histories for s in h["epoch_seconds"][1:]]
    return float(np.median(seconds)) if seconds else float(np.median([h["epoch_seconds"][0] for h in histories]))


def torch_run_seconds(cfg, dataset: Dataset, epochs: int) -> tuple[float, list[float]]:
    """Wall time of ``epochs`` epochs of the PyTorch eager twin of ``cfg``'s run, and per epoch."""
    import torch

    from jaxfno.models.torch_twin import build_torch_model

    torch.manual_seed(cfg.train.seed)
    model = build_torch_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.b1, cfg.optim.b2),
                           eps=cfg.optim.eps)
    probe = torch.from_numpy(np.array(dataset.probe_simulated, np.complex64))
    support = torch.zeros(64, 64)
    support[16:48, 16:48] = 1.0
    n = cfg.train.train_subset or dataset.train.diffraction.shape[0]
    train = torch.from_numpy(np.array(dataset.train.diffraction[:n]))
    test = torch.from_numpy(np.array(dataset.test.diffraction))
    b = cfg.train.batch_size

    def loss_of(x):
        out = model(x[:, None])
        obj = torch.complex(out[:, 0], out[:, 1])
        if cfg.physics.object_support == "central":
            obj = obj * support
        gain = float(x.shape[0]) if cfg.physics.batch_gain == "upstream" else 1.0
        amp = gain * torch.fft.fftshift(torch.fft.fft2(obj * probe, norm="ortho"), dim=(-2, -1)).abs()
        return (amp - x).abs().mean() / (x.mean().detach() + 1e-8)

    per_epoch = []
    rng = np.random.default_rng(cfg.train.seed)
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.from_numpy(rng.permutation(n))
        stop = n - n % b if cfg.train.drop_last else n
        for i in range(0, stop, b):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(train[order[i:i + b]])
            loss.backward()
            opt.step()
        with torch.no_grad():
            total = sum(float(loss_of(test[i:i + b])) * min(b, len(test) - i) for i in range(0, len(test), b))
        per_epoch.append(time.perf_counter() - start)
        assert np.isfinite(total)
    return float(sum(per_epoch)), per_epoch


def bench_study(scale: str, members: int, epochs: int, dataset_for, with_torch: bool = True,
                condition: str = "asrun", execution: ExecutionConfig = ExecutionConfig()) -> dict:
    """Seed-runs per hour of the three ways (module docstring); ``dataset_for(data_cfg)``."""
    configs = [stage_a.config("stable", scale, s, condition=condition) for s in stage_a.seeds_for(members)]
    configs = [c.replace(train=c.train.replace(stop_after=epochs)) for c in configs]
    length = stage_a.config("stable", scale, condition=condition).train.trained_epochs
    dataset = dataset_for(configs[0].data)
    result = {"scale": scale, "condition": condition, "members": members, "epochs_timed": epochs,
              "epochs_per_run": length, "execution": execution.record()}
    with tempfile.TemporaryDirectory() as tmp:
        for way, together in (("together", True), ("sequential", False)):
            seconds, histories = _jax_runs(configs, dataset, pathlib.Path(tmp) / way, together, execution)
            steady = _steady_epoch(histories)
            programs = 1 if together else members
            full = seconds + (length - epochs) * steady * (1 if together else members)
            result[way] = {"seconds": seconds, "steady_epoch_seconds": steady,
                           "programs": programs, "seconds_per_seed_run": full / members,
                           "seed_runs_per_hour": 3600 * members / full}
    if with_torch:
        seconds, per_epoch = torch_run_seconds(configs[0], dataset, epochs)
        steady = float(np.median(per_epoch[1:] or per_epoch))
        full = seconds + (length - epochs) * steady
        result["torch"] = {"seconds": seconds, "steady_epoch_seconds": steady,
                           "seconds_per_seed_run": full, "seed_runs_per_hour": 3600 / full}
    best = max(("together", "sequential"), key=lambda w: result[w]["seed_runs_per_hour"])
    result["best_jax"] = best
    if with_torch:
        result["jax_over_torch"] = result[best]["seed_runs_per_hour"] / result["torch"]["seed_runs_per_hour"]
    return result
