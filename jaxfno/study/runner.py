"""Run a study: conditions × arms × seeds → run directories ``OUT/<condition>/<arm>/seed<seed>/``.

Runs that share a program signature (same structure; differing only in seed, learning rate,
schedule or clip threshold) are trained together in one program, at most ``max_members`` at a
time (0 = unlimited; default: unlimited on an accelerator, on the CPU 3, since unrolled members compile in
time proportional to their number and run no faster together; equal-sized chunks of one
signature reuse one compiled program through the persistent compilation cache). Groups are run lazily,
on first request, so the pytest study can ask for one arm and seed at a time and still train
whole groups at once. Finished runs of the same config are reused.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Iterable

import jax

from jaxfno.config import DataConfig, RunConfig
from jaxfno.data import Dataset
from jaxfno.execution import ExecutionConfig
from jaxfno.pipeline import RunResult, run_members
from jaxfno.study import stage_a
from jaxfno.training import Progress, program_signature


@dataclasses.dataclass(frozen=True)
class RunKey:
    arm: str
    seed: int
    condition: str = "fixed"

    @property
    def id(self) -> str:
        return f"{self.condition}-{self.arm}-seed{self.seed}"

    @property
    def cell(self) -> str:
        """Arm × condition: what seeds are replicates of."""
        return f"{self.arm}@{self.condition}"


class Study:
    """Arms × conditions × seeds at one scale; run directories ``OUT/<condition>/<arm>/seed<s>``.

    ``datasets`` gives the dataset of a data config (conditions differ in their phase), or is
    the one dataset every run trains on; ``data`` is the base data config (probe, photons, noise
    seed)."""

    def __init__(self, arms: Iterable[str], scale: str, seeds: Iterable[int],
                 out_dir: pathlib.Path, datasets: Dataset | Callable[[DataConfig], Dataset],
                 progress: Progress | None = None, max_members: int | None = None,
                 conditions: Iterable[str] = ("fixed",), data: DataConfig = DataConfig(),
                 execution: ExecutionConfig = ExecutionConfig(), keep_epochs_from: int = 0):
        self.arms, self.scale, self.seeds = list(arms), scale, list(seeds)
        self.conditions, self.execution = list(conditions), execution
        self.keep_epochs_from = keep_epochs_from  # every epoch's state kept from this one on (0: none)
        unknown = [a for a in self.arms if a not in stage_a.ARMS]
        unknown += [c for c in self.conditions if c not in stage_a.CONDITIONS]
        if unknown:
            raise ValueError(f"unknown arm(s) or condition(s) {unknown}; arms: {', '.join(stage_a.ARMS)}; "
                             f"conditions: {', '.join(stage_a.CONDITIONS)}")
        if isinstance(datasets, Dataset):  # one dataset: the conditions must all train on it
            data, datasets = datasets.config, _only(datasets)
        self.out_dir, self.progress, self._datasets = pathlib.Path(out_dir), progress, datasets
        self.configs: dict[RunKey, RunConfig] = {
            RunKey(a, s, c): stage_a.config(a, scale, s, data, c)
            for c in self.conditions for a in self.arms for s in self.seeds
        }
        if max_members is None and jax.default_backend() == "cpu":
            max_members = 3
        by_signature: dict[str, list[RunKey]] = {}
        for key, cfg in self.configs.items():
            by_signature.setdefault(program_signature(cfg), []).append(key)
        size = max_members or len(self.configs)
        self.groups: list[list[RunKey]] = [
            keys[i:i + size] for keys in by_signature.values() for i in range(0, len(keys), size)
        ]
        self.results: dict[RunKey, RunResult] = {}

    def dataset(self, key: RunKey) -> Dataset:
        return self._datasets(self.configs[key].data)

    def run_dir(self, key: RunKey) -> pathlib.Path:
        return self.out_dir / key.condition / key.arm / f"seed{key.seed}"

    def result(self, key: RunKey) -> RunResult:
        if key not in self.results:
            group = next(g for g in self.groups if key in g)
            results = run_members([self.configs[k] for k in group], [self.run_dir(k) for k in group],
                                  self.dataset(key), progress=self.progress, execution=self.execution,
                                  keep_epochs_from=self.keep_epochs_from)
            self.results.update(zip(group, results))
        return self.results[key]

    def run_all(self) -> dict[RunKey, RunResult]:
        for key in self.configs:
            self.result(key)
        return dict(self.results)


def _only(dataset: Dataset) -> Callable[[DataConfig], Dataset]:
    def get(cfg: DataConfig) -> Dataset:
        if cfg != dataset.config:
            raise ValueError(f"this study was given one dataset ({dataset.config.to_dict()}); a run "
                             f"needs another ({cfg.to_dict()}): pass a dataset loader")
        return dataset

    return get


def finished_runs(out_dir: pathlib.Path,
                  load: Callable[[pathlib.Path], RunResult] = RunResult.load) -> dict[RunKey, RunResult]:
    """Every finished run below ``out_dir`` (``<condition>/<arm>/seed<seed>/`` with a verdict),
    each read by ``load``."""
    results = {}
    for verdict in sorted(pathlib.Path(out_dir).glob("*/*/seed*/verdict.json")):
        run_dir = verdict.parent
        key = RunKey(run_dir.parent.name, int(run_dir.name.removeprefix("seed")), run_dir.parent.parent.name)
        results[key] = load(run_dir)
    return results
