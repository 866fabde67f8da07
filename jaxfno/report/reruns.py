"""FINDINGS.md's section 5: runs trained again with the same config on the same machine at another
commit, against the committed runs of the same name: how far rounding carries."""

from __future__ import annotations

import pathlib

import numpy as np

from jaxfno.io import read_json


def _outcome(run_dir: pathlib.Path) -> str:
    if not (run_dir / "verdict.json").exists():
        return "unfinished"
    verdict = read_json(run_dir / "verdict.json")
    events = verdict.get("outcome_details", {}).get("events", [])
    where = f" at step {events[0]['step']} (epoch {events[0]['epoch'] + 1})" if events else ""
    return verdict.get("outcome", "?") + where


def rerun_section(folder: pathlib.Path, reference: pathlib.Path) -> list[str]:
    """Runs trained again with the same config on the same machine at another commit, against
    the committed run of the same name under ``reference``: where their per-step losses part."""
    lines = ["## 5. The same config again at another code revision (full scale): how far rounding carries", ""]
    rows = []
    for history_file in sorted(folder.glob("seed*/history.json")) if folder.exists() else []:
        ref_dir, run_dir = reference / history_file.parent.name, history_file.parent
        if not (ref_dir / "history.json").exists():
            continue
        a, b = read_json(ref_dir / "history.json"), read_json(history_file)
        n = min(len(a["step_loss"]), len(b["step_loss"]))
        x, y = np.asarray(a["step_loss"][:n]), np.asarray(b["step_loss"][:n])
        rel = np.abs(x - y) / np.maximum(np.abs(x), 1e-30)

        def first(threshold: float) -> str:
            above = np.flatnonzero(rel > threshold)
            return f"step {above[0]}" if above.size else f"none in {n}"

        same = read_json(ref_dir / "config.json") == read_json(run_dir / "config.json")
        epochs = min(len(a["val_loss"]), len(b["val_loss"]))
        vals = "; ".join(f"{a['val_loss'][e]:.4f} / {b['val_loss'][e]:.4f}" for e in range(epochs))
        commits = [(h.get("execution", {}).get("commit") or "not recorded")[:12] for h in (a, b)]
        outcomes = " / ".join(_outcome(d) for d in (ref_dir, run_dir))
        rows.append(f"| {run_dir.name} | {'yes' if same else 'NO'} | {commits[0]} / {commits[1]} | {n} | "
                    f"{first(1e-6)} | {first(1e-3)} | {first(0.1)} | {outcomes} | {vals} |")
    if not rows:
        return lines + ["None yet.", ""]
    return lines + [f"Runs in `{folder}` against the committed runs of the same name in `{reference}` (same "
                    "machine, same config, another code revision; step losses compared over the steps both have):",
                    "", "| run | same config | commits (committed / rerun) | steps compared | first step differing "
                    "> 1e-6 | > 1e-3 | > 10 % | outcome, first divergence event (committed / rerun) | "
                    "val_loss per epoch (committed / rerun) |",
                    "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def rerun_sentence(folder: pathlib.Path, reference: pathlib.Path) -> str | None:
    clauses = []
    for history_file in sorted(folder.glob("seed*/history.json")) if folder.exists() else []:
        ref = reference / history_file.parent.name / "history.json"
        if not ref.exists():
            continue
        a, b = read_json(ref)["step_loss"], read_json(history_file)["step_loss"]
        n = min(len(a), len(b))
        rel = np.abs(np.asarray(a[:n]) - np.asarray(b[:n])) / np.maximum(np.abs(np.asarray(a[:n])), 1e-30)
        tiny, large = np.flatnonzero(rel > 0), np.flatnonzero(rel > 0.1)
        if tiny.size and large.size:
            clauses.append(f"{history_file.parent.name} parted from the committed run at step {tiny[0]} by "
                           f"{rel[tiny[0]]:.1e} and by more than 10 % at step {large[0]} (committed / rerun: "
                           f"{' / '.join(_outcome(p.parent) for p in (ref, history_file))})")
    if not clauses:
        return None
    return ("Full-scale runs trained again with the same config on the same machine at another commit (section 5): "
            + "; ".join(clauses) + ". Trajectories here are sensitive to tiny numerical differences (the first ones "
            "at the level of float rounding), so the timing of a late divergence in one run, or its absence in one "
            "branch, says little; seeds (or null-perturbation branches) "
            "are the unit of replication.")
