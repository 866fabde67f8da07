"""FINDINGS.md: the study's answer, written from the committed runs (never typed by hand).

Sections, each from its folder of finished runs (study layout ``<condition>/<arm>/seed<s>``):
the fidelity check at full scale, the proxy calibration, the remedies from seeds (full scale,
``seeds_<machine>``; proxy factorial) and from branches, the branch experiments. A section whose
runs do not exist yet says so.
"""

from __future__ import annotations

import dataclasses
import pathlib
import platform
from collections import Counter
from collections.abc import Sequence

import numpy as np

from jaxfno.data.simulate import n_positions
from jaxfno.evaluation.outcomes import epoch_steps, lowest_trailing_median, trailing_median
from jaxfno.io import read_json
from jaxfno.provenance import code_commit
from jaxfno.pipeline import RunResult
from jaxfno.report.branches import (NULL_GROUP, branch_rows, level_word, loss_range as _range, null_perturbation_section,
                                   pooled_section, pooled_sentence, pooled_summary)
from jaxfno.report.exposure import Exposure, Group, exposure, exposure_section, exposure_sentence
from jaxfno.report.mechanism import kick_section, kick_sentence
from jaxfno.report.report_only import read_reports, report_only_section, report_only_sentence
from jaxfno.report.study import outcome_text, summarise
from jaxfno.study import stage_a
from jaxfno.study.runner import finished_runs

UPSTREAM = ("Upstream (SPEC §8): `stable_hybrid` reached val ≈ 0.024 by epoch 4–6 and then went exactly "
            "constant (amp SSIM 0.277 = the floor, val ≈ 0.18–0.20), in every arm it reported, and concluded "
            "that \"the collapse is architectural\".")


def _ci(cell: dict) -> str:
    low, high = cell["p_collapse_wilson95"]
    return f"{cell['collapsed']}/{cell['n']} = {cell['p_collapse']:.2f} [{low:.2f}, {high:.2f}]"


def _median(cell: dict) -> str:
    m = cell["median_steps_to_divergence"]
    return "not reached" if m is None else f"step {m:.0f}"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def _cells(folder: pathlib.Path) -> dict:
    runs = finished_runs(folder) if folder.exists() else {}
    return summarise(runs) if runs else {}


def _epochs(cell: dict) -> str:
    epochs = sorted(e + 1 for e in cell["divergence_epochs"])
    return ", ".join(map(str, epochs)) or "–"


def fidelity_section(folder: pathlib.Path) -> tuple[list[str], dict]:
    cells = _cells(folder)
    lines = ["## 1. Does upstream's collapse reproduce? (fidelity check, full scale)", ""]
    if not cells:
        return lines + ["Not run yet.", ""], cells
    lines += [f"`stable` (Adam 1e-3, no clipping) at full scale, conditions of SPEC §7.1 "
              f"(runs: `{folder}`; each condition's description in `jaxfno/study/stage_a.py`).", "",
              "| condition | what it is | seeds | epochs | outcomes | P(collapse) [95 % Wilson] | "
              "divergence epochs | best val | final val | final contrast |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells.values():
        cond = stage_a.CONDITIONS.get(c["condition"])
        lines.append(f"| {c['condition']} | {cond.description if cond else '?'} | {c['n']} | "
                     f"{', '.join(map(str, c['epochs']))} | {outcome_text(c['outcomes'])} | {_ci(c)} | {_epochs(c)} | "
                     f"{_fmt(c['best_val_loss'])} | {_fmt(c['final_val_loss'])} | {_fmt(c['final_contrast'], 3)} |")
    lines += ["", UPSTREAM, ""]
    if (folder / "report" / "survival.png").exists():
        lines += [f"![Time to the first divergence event, full scale]({folder}/report/survival.png)", ""]
    return lines, cells


def _fmt(stat, digits: int = 4) -> str:
    if stat is None:
        return "–"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def calibration_section(folder: pathlib.Path, reference: dict, reference_levels: dict = {}) -> list[str]:
    lines = ["## 2. Proxy calibration (SPEC §7.3)", ""]
    scales = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    rows = []
    for scale_dir in scales:
        levels = _levels(scale_dir)
        for c in _cells(scale_dir).values():
            ref = reference.get(f"stable@{c['condition']}")
            cell = f"{c['arm']}@{c['condition']}"
            reached = _range(levels.get(cell, {}).get("lowest", []))
            ref_events = _range(reference_levels.get(f"stable@{c['condition']}", {}).get("at_event", []))
            verdict = "–"
            if ref:
                inside = _inside(ref, c)
                verdict = "yes" if inside else "no"
                if inside and c["collapsed"] == 0 and ref["collapsed"] == 0:
                    verdict = "yes, but neither collapses: nothing for a remedy to prevent"
            s = stage_a.SCALES.get(scale_dir.name)
            size = (f"width {s.width}, {s.train_subset or n_positions(4) ** 2} patterns, {s.epochs} epochs"
                    + (f" (stops after {s.stop_after})" if s and s.stop_after else "")) if s else "?"
            rows.append(f"| {scale_dir.name} | {size} | {c['arm']} | {c['condition']} | {c['n']} | "
                        f"{outcome_text(c['outcomes'])} | {_ci(c)} | {_epochs(c)} | {_fmt(c['best_val_loss'])} | "
                        f"{_fmt(ref['best_val_loss']) if ref else '–'} | {reached} | {ref_events} | {verdict} |")
    if not rows:
        return lines + ["Not run yet.", ""]
    return lines + ["Every calibration run, against the full-scale rate of the same condition (section 1): a "
                    "candidate reproduces when each rate lies in the other's 95 % Wilson interval. Best val: the "
                    "lowest validation loss of each run (mean ± SD over seeds), beside full scale's in the same "
                    "condition: the full-scale divergences came after the loss had fallen that low. Training loss "
                    "reached: the lowest 100-step median of the step loss after epoch 1 (up to a first divergence "
                    "event), min–max over seeds, beside the same median just before full scale's events.", "",
                    "| candidate | size | arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | "
                    "divergence epochs | best val | full scale's best val | training loss reached | full scale's "
                    "training loss at its events | within the full-scale interval |",
                    "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]


def _device(folder: pathlib.Path) -> str:
    """The device the folder's runs trained on, as their histories record it."""
    devices = sorted({stage_a.run_device(read_json(h)) for h in folder.glob("*/*/seed*/history.json")})
    return ", ".join(devices) or "?"


def seed_folders(full: pathlib.Path) -> list[pathlib.Path]:
    """Full-scale study folders of remedy arms trained from seeds (``seeds_<machine>``)."""
    return sorted(p for p in full.glob("seeds_*") if p.is_dir())


def _run_level(r) -> tuple[float | None, float | None]:
    """(lowest trailing median before the first divergence event or the end, the one at that event)."""
    events = r.verdict.get("outcome_details", {}).get("events", [])
    until = events[0]["step"] if events else None
    lowest = lowest_trailing_median(r.history["step_loss"], epoch_steps(r.history)[0], until)
    return lowest, (events[0].get("trailing_median") if events else None)


def _levels(folder: pathlib.Path) -> dict[str, dict[str, list[float]]]:
    """Per cell, how far each run had descended before its first divergence event (or in all)
    and the trailing median loss at that event: whether a remedy that did not diverge ever
    reached the loss at which `stable` did."""
    levels: dict[str, dict[str, list[float]]] = {}
    for key, r in (finished_runs(folder) if folder.exists() else {}).items():
        cell = levels.setdefault(key.cell, {"lowest": [], "at_event": []})
        for name, value in zip(("lowest", "at_event"), _run_level(r)):
            if value is not None:
                cell[name].append(value)
    return levels


def level_sentence(results: list[tuple[str, object]], reference: str = "stable") -> str | None:
    """Where in the descent the divergences came, over (label, run) pairs of one condition (a
    label is "arm (folder)"): the level is that of ``reference``'s events, as in the exposure table."""
    levels = [(label, *_run_level(r)) for label, r in results]
    ours = [e for label, _, e in levels if e is not None and label.split(" (")[0] == reference]
    others = [(label, e) for label, _, e in levels if e is not None and label.split(" (")[0] != reference]
    quiet = [(label, low) for label, low, e in levels if e is None and low is not None]
    if not ours or not quiet:
        return None

    def group(keep) -> str:
        chosen = [(label, low) for label, low in quiet if keep(low)]
        labels = ", ".join(f"{label} {n}" for label, n in Counter(label for label, _ in chosen).items())
        return f"{len(chosen)}" + (f" (lowest {_range([low for _, low in chosen])}; {labels})" if chosen else "")

    low, high = min(ours), max(ours)
    other = (" (other arms' first events: " + ", ".join(f"{label} at {e:.3g}" for label, e in others) + ")"
             if others else "")
    return (f"Over the {len(levels)} full-scale `asrun` runs from seeds (both machines), `{reference}`'s "
            f"{len(ours)} first divergence events began at a 100-step median training loss of {_range(ours)}"
            f"{other}. Of the runs without an event, {group(lambda x: x < low)} went lower than that without "
            f"diverging, so this level alone does not set a divergence off; {group(lambda x: low <= x <= high)} "
            f"came down into that range; {group(lambda x: x > high)} stayed above it (section 3).")


def _levels_sentence(folder: pathlib.Path) -> str | None:
    """Did a remedy that diverged less train down to where `stable` diverged? Per seed, the
    remedy's 100-step median at the step where the same seed's `stable` run diverged."""
    runs = finished_runs(folder) if folder.exists() else {}
    levels, clauses = _levels(folder), []
    for cell, lv in levels.items():
        arm, condition = cell.split("@")
        ref = levels.get(f"stable@{condition}")
        if arm in ("stable", "control") or not ref or not ref["at_event"] or lv["at_event"] or not lv["lowest"]:
            continue
        same_step, lr, ref_lr = [], [], []  # the remedy's loss and learning rate where `stable` diverged
        for key, r in runs.items():
            events = r.verdict.get("outcome_details", {}).get("events", [])
            twin = runs.get(dataclasses.replace(key, arm=arm))
            if key.arm == "stable" and key.condition == condition and events and twin:
                step = events[0]["step"]
                twin_loss = np.asarray(twin.history["step_loss"], float)
                same_step.append(float(trailing_median(twin_loss)[step]))
                lr.append(twin.history["lr"][step])
                ref_lr.append(r.history["lr"][step])
        reached = level_word(lv["lowest"], ref["at_event"]) != "above"
        epochs = max(len(r.history["val_loss"]) for key, r in runs.items() if key.cell == cell)
        clauses.append(f"`{arm}`'s lowest 100-step median training loss after epoch 1 was {_range(lv['lowest'])}, "
                       f"against {_range(ref['at_event'])} just before `stable`'s divergence events"
                       + (f"; at the steps where `stable` diverged, the same seeds' `{arm}` runs were at "
                          f"{_range(same_step)}, at a learning rate of {_range(lr)} against `stable`'s "
                          f"{_range(ref_lr)}" if same_step else "") + ": "
                       + ("it reached that level and did not diverge" if reached else
                          f"it descended more slowly and did not reach that level within {epochs} "
                          "epochs, so these seeds show fewer collapses in that time, not prevention"))
    return ("; ".join(clauses) + f" (`{folder.name}`).") if clauses else None


def revisions_sentence(folders: list[pathlib.Path]) -> str | None:
    """Which code revisions each folder's arms trained at, where a folder mixes them: a seed
    retrained at another revision can take another trajectory (section 5)."""
    clauses = []
    for folder in folders:
        by_arm: dict[str, Counter] = {}
        for key, r in (finished_runs(folder) if folder.exists() else {}).items():
            commit = r.history.get("execution", {}).get("commit")
            by_arm.setdefault(key.arm, Counter())[commit[:7] if commit else "unrecorded"] += 1
        if len({c for counts in by_arm.values() for c in counts}) > 1:
            clauses.append(f"`{folder.name}`: " + "; ".join(
                f"{arm} " + ", ".join(f"{c} ({n})" for c, n in sorted(counts.items()))
                for arm, counts in sorted(by_arm.items())))
    if not clauses:
        return None
    return ("Code revisions (runs per revision): " + "; ".join(clauses) + ". Within such a folder the arms share "
            "config, seeds and machine but not the code revision, and a seed retrained at another revision can "
            "take another trajectory (section 5).")


def seeds_section(folders: list[pathlib.Path]) -> list[str]:
    lines = ["## 3. The remedies", "", "### From seeds at full scale", ""]
    rows = []
    for folder in folders:
        levels, device = _levels(folder), _device(folder)
        for c in _cells(folder).values():
            lv = levels.get(f"{c['arm']}@{c['condition']}", {"lowest": [], "at_event": []})
            rows.append(f"| `{folder.name}` ({device}) | {c['arm']} | {c['condition']} | {c['n']} | "
                        f"{outcome_text(c['outcomes'])} | {_ci(c)} | {_p(c['fisher_p_vs_stable'])} | {_median(c)} | "
                        f"{_p(c['logrank_p_vs_stable'])} | {_epochs(c)} | {_fmt(c['best_val_loss'])} | "
                        f"{_range(lv['lowest'])} | {_range(lv['at_event'])} |")
    if not rows:
        return lines + ["No remedy arm has run from seeds at full scale yet.", ""]
    lines += ["Each folder is one machine; its arms differ in their recipe and share the seeds (initialisation "
              "and data order; code revisions below), so each remedy is tested against `stable` on the same machine (one-sided Fisher; "
              "two-sided log-rank on the first divergence event; divergence epochs 1-based). Training loss reached: "
              "the lowest 100-step median of the step loss after epoch 1, up to the run's first divergence event "
              "or its end, min–max over seeds; at the event: the same median just before it.", "",
              "| runs | arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | Fisher p vs stable | "
              "median time to divergence | log-rank p | divergence epochs | best val | training loss reached | "
              "training loss at the event |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    for sentence in filter(None, [*map(_levels_sentence, folders), revisions_sentence(folders)]):
        lines += [sentence, ""]
    for folder in folders:
        if (folder / "report" / "survival.png").exists():
            lines += [f"![Time to the first divergence event, `{folder.name}`]({folder}/report/survival.png)", ""]
    return lines


def exposure_groups(folders: list[pathlib.Path], branch_folders: list[pathlib.Path], level: float,
                    pooled: dict, proxies: Sequence[pathlib.Path] = ()) -> list[Group]:
    """Each cell of the full-scale runs from seeds (``folders``: a run linked into two folders
    counts once; the zero-phase object's cells, whose losses are another problem's, left out),
    each change of the branches pooled over their branch points (``pooled``: their
    ``pooled_summary``, which names each group's change), and each proxy candidate's cell whose
    runs trained down to ``level`` (``proxies``; those that did not are section 2's), as exposure
    groups."""
    seen: set[pathlib.Path] = set()

    def cells(folder: pathlib.Path) -> dict[tuple[str, str], tuple[Exposure, ...]]:
        found: dict[tuple[str, str], list[Exposure]] = {}
        for key, r in (finished_runs(folder) if folder.exists() else {}).items():
            if stage_a.CONDITIONS[key.condition].set_phi and r.run_dir.resolve() not in seen:
                seen.add(r.run_dir.resolve())
                found.setdefault((key.arm, key.condition), []).append(exposure(r, level))
        return {cell: tuple(e) for cell, e in found.items()}

    groups = [Group(f"`{folder.name}`", arm, condition, _device(folder), e)
              for folder in folders for (arm, condition), e in cells(folder).items()]
    proxy_groups = [Group(f"`calibration/{folder.name}`", arm, condition, _device(folder), e, folder.name)
                    for folder in proxies for (arm, condition), e in cells(folder).items()
                    if any(x.short_batches for x in e)]
    branches: dict[str, list] = {}
    for folder in branch_folders:
        for name, rows in (branch_rows(folder) if folder.exists() else {}).items():
            for row in rows:
                r = RunResult.load(folder / row["run"])
                branches.setdefault(name, []).append((stage_a.run_device(r.history),
                                                      exposure(r, level, row["first_step"])))
    for name, found in branches.items():
        groups.append(Group("branches", pooled[name]["change"], "asrun", ", ".join(sorted({d for d, _ in found})),
                            tuple(e for _, e in found)))
    return groups + proxy_groups


def _inside(a: dict, b: dict) -> bool:
    """Each cell's rate inside the other's 95 % Wilson interval (SPEC §7.3's agreement)."""
    (alow, ahigh), (blow, bhigh) = a["p_collapse_wilson95"], b["p_collapse_wilson95"]
    return alow <= b["p_collapse"] <= ahigh and blow <= a["p_collapse"] <= bhigh


def _not_run(arm: str, condition: str, sources: list[tuple[str, str, dict, dict]]) -> str:
    """Why a cell has no runs, where the sources say: no `stable` run from seeds collapsed in that
    condition (a remedy there has shown nothing to prevent yet)."""
    stable = [(label, cells[f"stable@{condition}"]) for label, _, cells, _ in sources if f"stable@{condition}" in cells]
    if arm == "stable" or not stable or any(c["collapsed"] for _, c in stable):
        return "not run"
    seen = "; ".join(f"{c['collapsed']}/{c['n']}, {label}" for label, c in stable)
    return f"not run: `stable` has not collapsed here ({seen})"


def matrix_section(sources: list[tuple[str, str, dict, dict]], factorial: dict,
                   conditions: tuple[str, ...] = ("asrun", "fixed")) -> list[str]:
    """Per arm and condition, every line of evidence from seeds: each full-scale source's cell
    (``sources``: label, machine, cells, training-loss levels; a cell with the same seeds on the
    same machine shown by an earlier source is not repeated) and the proxy factorial's, with whether the full scale confirms the proxy; "not
    run" where none exists."""
    rows, shown = [], set()
    for arm in stage_a.SPEC_ARMS:
        for condition in conditions:
            key, found = f"{arm}@{condition}", []
            for label, device, cells, levels in sources:
                cell = cells.get(key)
                same = (key, tuple(cell["seeds"]), device) if cell else None
                if cell and same not in shown:
                    shown.add(same)
                    reached = _range(levels.get(key, {}).get("lowest", []))
                    events = _range(levels.get(f"stable@{condition}", {}).get("at_event", []))
                    found.append((label, cell, f"{reached} ({events})", "–"))
            if key in factorial:
                full = [c for _, c, _, _ in found]
                confirmed = ("not run at full scale" if not full else
                             "yes" if all(_inside(factorial[key], c) for c in full) else "no")
                found.append(("proxy (`factorial`)", factorial[key], "–", confirmed))
            for label, c, level, confirmed in found:
                rows.append(f"| {arm} | {condition} | {label} | {c['n']} | {_ci(c)} | "
                            f"{_p(c['fisher_p_vs_stable'])} | {_median(c)} | {level} | {confirmed} |")
            if not found:
                rows.append(f"| {arm} | {condition} | {_not_run(arm, condition, sources)} | – | – | – | – | – | – |")
    note = ("" if factorial else " No proxy scale is calibrated (section 2), so there is no proxy answer to "
            "confirm: every number here is full scale.")
    return ["### Per remedy and condition", "",
            "Every cell of SPEC §7's arms × {" + ", ".join(conditions) + "} with the runs from seeds behind it "
            "(each machine separately: a remedy is tested only against `stable` on the same machine; one-sided "
            "Fisher; median time to divergence: Kaplan–Meier, in 0-based global steps, of the first divergence event "
            "whether or not the run collapsed; training loss reached: "
            "the lowest 100-step median after epoch 1 up to a first divergence event, min–max over seeds, with "
            "`stable`'s just before its events on the same machine in brackets: a remedy whose runs stayed above "
            "that level was not tested where `stable` diverged). Branches, which are one "
            "trajectory, are in the answer above and section 3." + note, "",
            "| arm | condition | runs | seeds | P(collapse) [95 % Wilson] | Fisher p vs stable | "
            "median time to divergence | training loss reached (`stable`'s at its events) | "
            "proxy confirmed at full scale |",
            "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def factorial_section(folder: pathlib.Path, confirm: dict) -> list[str]:
    cells = _cells(folder)
    lines = ["### Factorial at proxy scale", ""]
    if not cells:
        return lines + ["Not run yet: the factorial (SPEC §7's six arms × asrun, fixed × ≥ 8 seeds) waits for a "
                        "calibrated proxy scale.", ""]
    lines += ["| arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | Fisher p vs stable | "
              "median time to divergence | log-rank p | confirmed at full scale |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cells.values():
        full = confirm.get(f"{c['arm']}@{c['condition']}")
        confirmed = "not run" if full is None else f"{_ci(full)}"
        lines.append(f"| {c['arm']} | {c['condition']} | {c['n']} | {outcome_text(c['outcomes'])} | {_ci(c)} | "
                     f"{_p(c['fisher_p_vs_stable'])} | {_median(c)} | {_p(c['logrank_p_vs_stable'])} | "
                     f"{confirmed} |")
    return lines + ["", f"![Time to the first divergence event]({folder}/report/survival.png)", ""]


def branch_section(points: list[tuple[pathlib.Path, pathlib.Path]], single: list[pathlib.Path]) -> list[str]:
    """The null-perturbation branches of each branch point (grouped, with their statistics; a
    folder not made yet is left out after the first), then the older single branches, which have
    no null-perturbation control."""
    from jaxfno.report.runs import finished_run_dirs, runs_markdown

    lines = ["## 4. Branch experiments (full scale)", ""]
    for i, (folder, source) in enumerate(points):
        if i == 0 or folder.exists():
            lines += null_perturbation_section(folder, "The source and its branch point: the folder's README.", source)
    lines += ["### Single branches (no null-perturbation control)", ""]
    for folder in single:
        runs = finished_run_dirs([folder]) if folder.exists() else []
        if runs:
            lines += [f"`{folder}` (each `branch.json` names its source and epoch):", "", runs_markdown(runs, folder)]
    return lines


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
    lines = ["## 5. The same run again (full scale): how far rounding carries", ""]
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


def _calibration_sentence(folder: pathlib.Path, fidelity: dict) -> str | None:
    """Whether any proxy candidate reproduced the full-scale `asrun` rate of `stable`."""
    ref = fidelity.get("stable@asrun")
    if ref is None or not folder.exists():
        return None
    tried = []
    for scale_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        cell = _cells(scale_dir).get("stable@asrun")
        if cell:
            low, high = ref["p_collapse_wilson95"]
            inside = low <= cell["p_collapse"] <= high
            tried.append(f"{scale_dir.name} {_ci(cell)} ({'inside' if inside else 'outside'} the full-scale interval)")
    if not tried:
        return None
    return ("At proxy scale, `stable` in `asrun` collapsed in " + "; ".join(tried) +
            ": a factorial there tests the remedies only where a candidate reproduces the full-scale rate.")


def _rerun_sentence(folder: pathlib.Path, reference: pathlib.Path) -> str | None:
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
            + "; ".join(clauses) + ". Trajectories here are sensitive to tiny numerical differences (the first ones at the level of "
            "float rounding), so the timing of a late "
            "divergence in one run, or its absence in one branch, says little; seeds (or null-perturbation branches) "
            "are the unit of replication.")


def _how(cell: dict) -> str:
    constant = cell["outcomes"].get("collapsed_constant", 0)
    if constant:
        return f"{constant} of them ending at a constant output"
    diverged = cell["outcomes"].get("diverged")
    return "by divergence rather than to a constant output" if diverged else "without divergence"


def _seeds_sentence(folders: list[pathlib.Path]) -> str | None:
    """The full-scale seed cells: `stable` and each remedy against it, per machine."""
    parts = []
    for folder in folders:
        cells, device = _cells(folder), _device(folder)
        for condition in sorted({c["condition"] for c in cells.values()}):
            ref = cells.get(f"stable@{condition}")
            remedies = [c for c in cells.values()
                        if c["condition"] == condition and c["arm"] not in ("stable", "control")]
            if not ref or not remedies:
                continue
            constant = sorted(r.verdict["outcome_details"]["events"][0]["epoch"] + 1
                              for key, r in finished_runs(folder).items()
                              if key.cell == f"stable@{condition}" and r.verdict["outcome"] == "collapsed_constant"
                              and r.verdict["outcome_details"]["events"])
            parts.append(
                f"On {'the CPU' if device == 'cpu' else device} (`{folder.name}`, `{condition}`"
                + (", each remedy's seeds among `stable`'s" if all(set(c["seeds"]) <= set(ref["seeds"])
                                                                for c in remedies) else "") +
                f"): `stable` collapsed in {_ci(ref)} (outcomes: {outcome_text(ref['outcomes'])}; "
                f"first divergence events in epochs {_epochs(ref)}"
                + (f"; {len(constant)} of its collapses ended at upstream's constant output, the plateau, after a "
                   f"divergence event in epoch{'s' if len(constant) > 1 else ''} {', '.join(map(str, constant))}"
                   if constant else "") + "), while "
                + "; ".join(f"`{c['arm']}` collapsed in {_ci(c)} (one-sided Fisher p {_p(c['fisher_p_vs_stable'])}, "
                            f"two-sided log-rank p {_p(c['logrank_p_vs_stable'])} against `stable`)"
                            for c in remedies) + ".")
    return " ".join(parts) or None


def bottom_line(seed_cells: list[tuple[str, dict]], exposed: list[Group], branches: dict,
                fidelity: dict = {}) -> str | None:
    """The answer in one paragraph: `stable`'s collapse rate from seeds in `asrun`, each remedy's
    with whether its runs took short batches where `stable` diverged, the branches, and the arms
    not yet tested there (``seed_cells``: machine, cells; ``branches``: ``pooled_summary``;
    ``fidelity``: the fidelity check's cells, which say whether `asrun` is the only condition
    that collapsed)."""
    stable = [(device, cells["stable@asrun"]) for device, cells in seed_cells if "stable@asrun" in cells]
    if not stable:
        return None
    k, n = sum(c["collapsed"] for _, c in stable), sum(c["n"] for _, c in stable)
    only = {c["condition"] for c in fidelity.values() if c["collapsed"]} == {"asrun"}
    text = (("In the one condition that collapsed in the fidelity check" if only else "In") +
            f" (`asrun`, full scale), `stable` collapsed in {k}/{n} of its runs from seeds ("
            + ", ".join(f"{c['collapsed']}/{c['n']} on {device}" for device, c in stable)
            + f"; {len({s for _, c in stable for s in c['seeds']})} distinct seeds, a seed on two machines "
            "counted on each, since rounding parts their trajectories).")
    exposure_of = {(g.what, g.device): g.short_batches for g in exposed if g.label != "branches"
                   and g.condition == "asrun" and g.scale == "full"}
    remedies = [(device, c) for device, cells in seed_cells for c in cells.values()
                if c["condition"] == "asrun" and c["arm"] not in ("stable", "control")]
    tested = {c["arm"] for device, c in remedies if exposure_of.get((c["arm"], device))}
    if remedies:
        text += (" From seeds, " + ", ".join(f"`{c['arm']}` collapsed in {c['collapsed']}/{c['n']} on {device} "
                                            f"(Fisher p {_p(c['fisher_p_vs_stable'])})" for device, c in remedies))
        untested = [f"`{c['arm']}`" for _, c in remedies if c["arm"] not in tested]
        text += ("; " + ", ".join(untested) + " never trained down to the loss at which `stable` diverged (no short batch taken there), so those seeds show "
                   f"fewer collapses within {max(e for _, c in remedies for e in c['epochs'])} epochs, not "
                   "prevention." if untested else ".")
    null = branches.get(NULL_GROUP)
    if null:
        taken = {g.what: g for g in exposed if g.label == "branches"}
        others = [s for name, s in branches.items() if name != NULL_GROUP]
        text += (f" From states just before a divergence (one trajectory), the branches that changed only the data "
                 f"order collapsed in {null['collapsed']['k']}/{null['n']}, "
                 + ", ".join(f"those with {s['change']} in {s['collapsed']['k']}/{s['n']}"
                             + (f" (a divergence event in {s['event']['k']}/{s['n']}, recovered from)"
                                if s.get("event", {}).get("k", 0) > s["collapsed"]["k"] else "")
                             + (f" after {taken[s['change']].short_batches} short batches at that loss"
                                if s["change"] in taken else "") for s in others) + ".")
    missing = [f"`{arm}`" for arm in stage_a.SPEC_ARMS if arm not in ("control", "stable") and arm not in tested
               and not any(arm == c["arm"] for _, c in remedies)]
    if missing:
        text += " Not yet run from seeds in `asrun`: " + ", ".join(missing) + "."
    return text


def answer_paragraph(fidelity: dict, factorial: dict, extra: list[tuple[str, str | None]] = (),
                     seeds: dict = {}) -> str:
    """The answer, one labelled bullet per line of evidence, from the cells and the ``extra``
    (label, sentence) pairs (nothing typed by hand)."""
    parts = []
    asrun, zero, fixed = (fidelity.get(f"stable@{c}") for c in ("asrun", "asrun_zero_phase", "fixed"))
    if zero:
        verdict = ("Upstream's early collapse was not seen at full scale" if zero["collapsed"] == 0
                   else "Upstream's early collapse reproduced at full scale")
        parts.append(f"{verdict}: on the zero-phase object with the batch gain and the short last batch (SPEC "
                     f"§10's lead) `stable` collapsed in {_ci(zero)} of its seeds within {max(zero['epochs'])} "
                     f"epochs (outcomes: {outcome_text(zero['outcomes'])}).")
    if asrun:
        parts.append(f"With set_phi on (`asrun`: the gain and the short batch, {max(asrun['epochs'])} epochs) it "
                     f"collapsed in "
                     f"{_ci(asrun)} (outcomes: {outcome_text(asrun['outcomes'])}), late (epochs "
                     f"{_epochs(asrun)}), {_how(asrun)}.")
    if fixed:
        parts.append(f"In the `fixed` condition (SPEC as written) it collapsed in {_ci(fixed)} "
                     f"(outcomes: {outcome_text(fixed['outcomes'])}).")
    bullets = [("Where it collapses (full scale, CPU)", " ".join(parts))] if parts else []
    for c in factorial.values():
        if c["arm"] not in ("stable", "control"):
            bullets.append(("Proxy factorial", f"`{c['arm']}` in `{c['condition']}`: P(collapse) {_ci(c)}, one-sided "
                            f"Fisher p {_p(c['fisher_p_vs_stable'])} against `stable`."))
    bullets += [(label, sentence) for label, sentence in extra if sentence]
    run = {c["arm"] for cells in (factorial, seeds) for c in cells.values()}
    missing = [arm for arm in stage_a.SPEC_ARMS if arm not in run | {"control", "stable"}]
    if missing:
        warmup = [arm for arm in stage_a.SPEC_ARMS if "warmup" in arm]
        bullets.append(("Not yet run", "From seeds in a condition that collapses, at either scale: "
                        + ", ".join(f"`{arm}`" for arm in missing) + "."
                        + (" So no committed run bears on warmup-cosine, whose schedule starts at the first "
                           "step and so cannot be tested by branching." if set(warmup) <= set(missing) else "")))
    return "\n".join(f"- **{label}.** {sentence}" for label, sentence in bullets)


CAVEATS = [
    "The probe is synthetic (SPEC §1.3): upstream's experimental probe is not public, and SPEC §10 found the "
    "probe the main missing ingredient of upstream's fast learning.",
    "Conclusions at proxy scale hold for that scale; the table says which cells were confirmed at full scale.",
    "Outcomes follow SPEC §6.3; the §6.1 verdicts stay in each run's verdict.json and the study tables.",
    "A branch that switches clipping on mid-run meets Adam moments accumulated from unclipped gradients: the "
    "second moment (b2 = 0.999) keeps their scale for about 1000 steps, so the clip branches also cut the "
    "effective learning rate by about the ratio of 0.5 to the unclipped gradient norm (section 6); they do not "
    "stand in for a run clipped from its first step.",
    "One trajectory can be moved by any single step (the branch experiments show it); seeds are the unit of "
    "replication, and the runs of one cell differ only in the seed (initialisation and data order).",
    "Runs on other hardware can take other trajectories from the same seed (floating-point rounding); every "
    "number here comes from the devices named in each folder's README. SPEC §10 reports the zero-phase "
    "condition collapsing for seeds 20260128 and 20260129 on another machine with the same command; on this "
    "project's CPU both seeds stayed healthy, from a first epoch that already differed.",
]


def architecture_caveat(tested: bool) -> str:
    """What limits this project's word on upstream's conclusion, "the collapse is architectural"."""
    if not tested:
        return ("Upstream concluded that the collapse is architectural. Here the hybrid control has not been run in "
                "a collapsing condition yet, so this project can neither confirm nor refute that; SPEC §9.7 notes "
                "upstream's own control runs collapsed too.")
    return ("Upstream concluded that the collapse is architectural. Here the hybrid `control` differs from `stable` "
            "in its norm clip at 1.0 as well as in its generator (with the batch gain the clip acts on nearly every "
            "step, section 6), so a difference between them is not the architecture's alone; SPEC §9.7 notes "
            "upstream's own control runs collapsed too.")


def architecture_sentence(folders: list[pathlib.Path]) -> str | None:
    """Upstream's conclusion, "the collapse is architectural" (`stable_hybrid` collapses where the
    hybrid generator does not), against the hybrid `control` beside `stable` from the same seeds
    on one machine."""
    parts = []
    for folder in folders:
        cells, levels = _cells(folder), _levels(folder)
        for key in sorted(k for k in cells if k.startswith("control@")):
            control = cells[key]
            condition = control["condition"]
            stable = cells.get(f"stable@{condition}")
            if not stable:
                continue
            lowest = levels.get(key, {}).get("lowest", [])
            ref = levels.get(f"stable@{condition}", {}).get("at_event", [])
            parts.append(
                f"in `{condition}` on {_device(folder)} (`{folder.name}`) the hybrid `control` "
                f"({stage_a.ARMS['control'].description}) collapsed in {_ci(control)} (outcomes: "
                f"{outcome_text(control['outcomes'])}"
                + (f"; first divergence events in epochs {_epochs(control)}" if control["divergence_epochs"] else "")
                + "), `stable` in "
                f"{_ci(stable)} "
                f"(one-sided Fisher p {_p(control['fisher_p_vs_stable'])} for fewer collapses with the hybrid)"
                + (f"; the hybrid's lowest 100-step median training loss was {_range(lowest)}"
                   + (f", against {_range(ref)} just before `stable`'s divergence events"
                      + (", so it never trained down to where `stable` diverged"
                         if level_word(lowest, ref) == "above" else "") if ref else "")
                   if lowest else ""))
    if not parts:
        return None
    return ("Upstream concluded that the collapse is architectural (`stable_hybrid` collapses where the hybrid "
            "generator does not). At full scale, " + "; ".join(parts) + " (the control also clips; see the caveats).")


WARMUP_NOTE = ("Warmup-cosine (`stable_warmup` and its combinations) has no branches: its schedule starts at the "
               "first step, so switching it on mid-run would test another recipe; its evidence can only come from "
               "seeds. These branches are full scale.")


# the null-perturbation branches of the rerun, one folder per branch point: after epoch 17 (the
# last checkpoint before its divergence) and after epoch 16 (its best, before the epoch-17 kick)
BRANCH_POINTS = (("branches", "rerun/seed20260128"), ("branches_e16", "rerun/seed20260128"),
                 # the second source's, after the last epoch before its first divergence event
                 ("branches_seed20260129_e*", "rerun/seed20260129"))


def _unique(runs: list[pathlib.Path]) -> list[pathlib.Path]:
    """Each run once (the first path naming it), where folders link the same run."""
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for run in runs:
        seen.setdefault(run.resolve(), run)
    return list(seen.values())


def _dirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def branch_points(full: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(branch folder, its source run) of every branch point under ``full`` (patterns expanded;
    the first source's folders listed even before they exist)."""
    points = []
    for pattern, source in BRANCH_POINTS:
        folders = sorted(full.glob(pattern)) if "*" in pattern else [full / pattern]
        points += [(folder, full / source) for folder in folders]
    return points


def write_findings(root: pathlib.Path, out: pathlib.Path, caveats: list[str] = CAVEATS) -> str:
    """Assemble FINDINGS.md from ``root``'s results folders."""
    fidelity_lines, fidelity = fidelity_section(root / "stage_a_full_asrun" / "fidelity")
    full = root / "stage_a_full_asrun"
    seeds = seed_folders(full)
    seed_cells = {folder: _cells(folder) for folder in seeds}
    confirm = {key: cell for cells in seed_cells.values() for key, cell in cells.items()}
    full_runs = sorted(full.glob("fidelity/*/stable/seed*")) + sorted(full.glob("rerun/seed*"))
    seed_runs = [run for folder in seeds for run in sorted(folder.glob("*/*/seed*"))]
    # reports printed on a device whose runs did not come back: quoted apart, counted nowhere
    reports = read_reports(sorted(p for p in full.glob("*_report_only") if p.is_dir()),
                           {(_device(folder), key) for folder, cells in seed_cells.items() for key in cells})
    quoted = report_only_section(reports)
    # where it collapses, the remedies from seeds, from branches, why, then what limits the evidence
    architecture = architecture_sentence(seeds)
    seeds_text = " ".join(filter(None, [_seeds_sentence(seeds), *map(_levels_sentence, seeds)])) or None
    factorial = _cells(root / "stage_a_proxy" / "factorial")
    # the level of `stable`'s first divergence events from seeds, and who took short batches there
    level = max((e for folder in seeds for e in _levels(folder).get("stable@asrun", {}).get("at_event", [])),
                default=None)
    branch_folders = [f for f, _ in branch_points(full)]
    pooled = pooled_summary(branch_folders)
    exposed = exposure_groups([*seeds, full / "fidelity"], branch_folders, level, pooled,
                              _dirs(root / "stage_a_proxy" / "calibration")) if level else []
    answer = answer_paragraph(fidelity, factorial, [
        ("Remedies from seeds (full scale)", seeds_text),
        ("Reported, runs not retrieved (full scale)", report_only_sentence(reports)),
        ("How far the runs descended", level_sentence(list({
            r.run_dir.resolve(): (f"{key.arm} ({folder.name})", r) for folder in [full / "fidelity", *seeds]
            for key, r in (finished_runs(folder) if folder.exists() else {}).items()
            if key.condition == "asrun"}.values()))),  # a run linked into two folders counts once
        ("Exposure", exposure_sentence(exposed, level) if exposed else None),
        ("Remedies from branches (full scale, CPU, one trajectory)",
         pooled_sentence([folder for folder, _ in branch_points(full)])),
        # independent trajectories only: the rerun repeats a seed of the fidelity runs
        ("Mechanism", kick_sentence(_unique(sorted(full.glob("fidelity/*/stable/seed*"))
                                            + [run for run in seed_runs if run.parent.name == "stable"]))),
        ("Proxy", _calibration_sentence(root / "stage_a_proxy" / "calibration", fidelity)),
        ("Rounding", _rerun_sentence(full / "rerun", full / "fidelity" / "asrun" / "stable")),
        ("Architecture (upstream's conclusion)", architecture)], confirm)
    text = "\n".join([
        "# Findings: does a lower learning rate, warmup-cosine or clipping keep `stable_hybrid` from collapsing?",
        "",
        f"Written by `jaxfno findings` at commit {code_commit()} on {platform.machine()} from the runs under "
        f"`{root}`; every number below is read from them"
        + (" except those quoted from a device's report of runs that did not come back" if quoted else "")
        + ". Outcomes are SPEC §6.3's; collapse = non_finite, "
        "collapsed_constant or diverged. Epochs are 1-based; steps are 0-based global step indices.",
        "",
        "## The answer so far",
        "",
        *([line, ""] if (line := bottom_line([(_device(f), seed_cells[f]) for f in seeds], exposed,
                                              pooled, fidelity))
          else []),
        answer,
        "",
        *matrix_section([(f"full scale, {device} (`{folder.name}`)", device, _cells(folder), _levels(folder))
                         for folder in [*seeds, full / "fidelity"] for device in [_device(folder)]], factorial),
        *fidelity_lines,
        *calibration_section(root / "stage_a_proxy" / "calibration", fidelity,
                             _levels(root / "stage_a_full_asrun" / "fidelity")),
        *seeds_section(seeds),
        *quoted,
        *(exposure_section(exposed, level) if exposed else []),
        *factorial_section(root / "stage_a_proxy" / "factorial", confirm),
        *pooled_section([folder for folder, _ in branch_points(full)], WARMUP_NOTE),
        *branch_section(branch_points(full), [root / "stage_a_full_cpu_upstream_gain" / "branches",
                         root / "stage_a_full_cpu_upstream_gain" / "branches_seed20260130"]),
        *rerun_section(full / "rerun", full / "fidelity" / "asrun" / "stable"),
        *kick_section(_unique(full_runs + seed_runs), root),
        "## Caveats",
        "",
        *[f"- {c}" for c in [*caveats, architecture_caveat(architecture is not None)]],
        "",
    ])
    out.write_text(text)
    return text
