"""What the sections of FINDINGS.md share: a study cell's numbers as table text (rate with its
interval, median time to divergence, p-value, mean ± SD) and the folders, devices and runs behind them."""

from __future__ import annotations

import functools
import pathlib

from jaxfno.io import read_json
from jaxfno.pipeline import ARTIFACTS, RunResult
from jaxfno.report.study import summarise
from jaxfno.study import stage_a
from jaxfno.study.runner import RunKey, finished_runs


@functools.lru_cache(maxsize=1024)
def _load(run_dir: pathlib.Path, where: pathlib.Path, stamp: tuple) -> RunResult:
    return RunResult.load(run_dir)


def load_run(run_dir: pathlib.Path) -> RunResult:
    """A finished run, read once per version of its files: the sections of FINDINGS.md read the
    same runs many times. A version is the files' inode, size and mtime (writes are atomic
    renames, so a rewritten file is a new inode)."""
    run_dir = pathlib.Path(run_dir)  # as given: the sections print paths relative to their folders
    stamp = tuple((s.st_ino, s.st_size, s.st_mtime_ns) if (s := _stat(run_dir / name)) else None
                  for name in ARTIFACTS)
    return _load(run_dir, run_dir.absolute(), stamp)


def _stat(path: pathlib.Path):
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def runs(folder: pathlib.Path) -> dict[RunKey, RunResult]:
    """The finished runs of a study folder (none where it does not exist)."""
    return finished_runs(folder, load_run) if folder.exists() else {}


def ci(cell: dict) -> str:
    low, high = cell["p_collapse_wilson95"]
    return f"{cell['collapsed']}/{cell['n']} = {cell['p_collapse']:.2f} [{low:.2f}, {high:.2f}]"


def median(cell: dict) -> str:
    m = cell["median_steps_to_divergence"]
    return "not reached" if m is None else f"step {m:.0f}"


def p_text(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def fisher_text(cell: dict, inline: bool = False) -> str:
    """A cell's one-sided Fisher p against `stable`, with the sign test over the seeds both arms
    ran beside it (paired by seed): in brackets for a table, after a comma in a sentence."""
    paired = cell.get("paired_p_vs_stable")
    if paired is None:
        return p_text(cell["fisher_p_vs_stable"])
    return p_text(cell["fisher_p_vs_stable"]) + (f", paired by seed {p_text(paired)}" if inline
                                                 else f" (paired by seed {p_text(paired)})")


def cells(folder: pathlib.Path) -> dict:
    found = runs(folder)
    return summarise(found) if found else {}


def epochs(cell: dict) -> str:
    epochs = sorted(e + 1 for e in cell["divergence_epochs"])
    return ", ".join(map(str, epochs)) or "–"


def fmt(stat, digits: int = 4) -> str:
    if stat is None:
        return "–"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def device(folder: pathlib.Path) -> str:
    """The device the folder's runs trained on, as their histories record it."""
    devices = sorted({stage_a.run_device(load_run(h.parent).history if (h.parent / "verdict.json").exists()
                                         else read_json(h)) for h in folder.glob("*/*/seed*/history.json")})
    return ", ".join(devices) or "?"


def unique(runs: list[pathlib.Path]) -> list[pathlib.Path]:
    """Each run once (the first path naming it), where folders link the same run."""
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for run in runs:
        seen.setdefault(run.resolve(), run)
    return list(seen.values())


def dirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
