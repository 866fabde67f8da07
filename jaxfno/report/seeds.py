"""FINDINGS.md on the full-scale runs from seeds (``seeds_<machine>``): each remedy against `stable` on the same
machine, how far the runs descended, the per-remedy matrix, upstream's "architectural" against the hybrid control."""

from __future__ import annotations

import dataclasses
import pathlib
from collections import Counter

import numpy as np

from jaxfno.evaluation.outcomes import epoch_steps, lowest_trailing_median, trailing_median
from jaxfno.report.branches import level_word, loss_range as _range
from jaxfno.report.cells import ci, epochs, fisher_text, fmt, median, p_text, runs
from jaxfno.report.cells import cells as folder_cells, device as folder_device
from jaxfno.report.study import outcome_text
from jaxfno.study import stage_a


def seed_folders(full: pathlib.Path) -> list[pathlib.Path]:
    """Full-scale study folders of remedy arms trained from seeds (``seeds_<machine>``)."""
    return sorted(p for p in full.glob("seeds_*") if p.is_dir())


def longer_folders(full: pathlib.Path) -> list[pathlib.Path]:
    """Full-scale study folders of arms trained from seeds beyond the recipe's epochs
    (``longer_<machine>``): did a remedy that stayed above `stable`'s divergence level within the
    recipe get there later, and diverge there? A remedy is tested against `stable`'s collapse rate
    only where `stable` trained as long is in the same folder."""
    return sorted(p for p in full.glob("longer_*") if p.is_dir())


def trained_text(folder: pathlib.Path) -> str:
    """How many epochs a folder's runs trained, as their histories record, e.g. "40 epochs"."""
    return "/".join(sorted({str(len(r.history["val_loss"])) for r in runs(folder).values()}, key=int)) + " epochs"


def longer_sentence(folders: list[pathlib.Path], exposed: list, reference: list[float]) -> str | None:
    """Per cell of the runs trained longer: its outcomes, how far it descended against
    ``reference`` (`stable`'s training loss at its first divergence events, runs from seeds) and
    the short batches it took at that level (``exposed``: the exposure groups)."""
    parts, alone = [], False
    for folder in folders:
        levels, found, cells = loss_levels(folder), runs(folder), folder_cells(folder)
        for key, c in cells.items():
            stable = cells.get(f"stable@{c['condition']}") if c["arm"] != "stable" else None
            alone |= stable is None and c["arm"] != "stable"
            scheduled = sorted({r.config.optim.scheduler for k, r in found.items() if k.cell == key} - {"constant"})
            group = next((g for g in exposed if g.label == f"`{folder.name}`" and f"{g.what}@{g.condition}" == key),
                         None)
            lowest = levels.get(key, {}).get("lowest", [])
            parts.append(
                f"`{c['arm']}` in `{c['condition']}` trained for {', '.join(map(str, c['epochs']))} epochs on "
                f"{folder_device(folder)} (`{folder.name}`, seed{'s' if len(c['seeds']) != 1 else ''} "
                f"{', '.join(map(str, c['seeds']))}"
                + (f"; its {', '.join(scheduled)} schedule spans those epochs, so this is another recipe, not the "
                   "recipe's run continued" if scheduled else "") + ") collapsed in "
                f"{ci(c)} (outcomes: {outcome_text(c['outcomes'])}"
                + (f"; first divergence events in epochs {epochs(c)}" if c["divergence_epochs"] else "") + ")"
                + (f" against `stable` trained as long in {ci(stable)} (one-sided Fisher p "
                   f"{fisher_text(c, inline=True)}, two-sided log-rank p {p_text(c['logrank_p_vs_stable'])})"
                   if stable else "")
                + (f"; its lowest 100-step median training loss was {_range(lowest)}, against {_range(reference)} "
                   "just before `stable`'s first divergence events from seeds" if lowest and reference else "")
                + (f"; it took {group.short_batches} short batches at or below {max(reference):.3g}, with "
                   f"{group.events} first divergence event{'s' if group.events != 1 else ''} (section 3)"
                   if group and reference else ""))
    if not parts:
        return None
    return "; ".join(parts) + (". Where no `stable` run of that length is beside them, these runs test whether the "
                               "remedy reaches the level and diverges there, not a collapse rate against `stable`'s (the "
                               "chance given for the short batches uses the per-short-batch rate of `stable`'s seeds "
                               "trained to the recipe's length)." if alone
                               else ".")


def _run_level(r) -> tuple[float | None, float | None]:
    """(lowest trailing median before the first divergence event or the end, the one at that event)."""
    events = r.verdict.get("outcome_details", {}).get("events", [])
    until = events[0]["step"] if events else None
    lowest = lowest_trailing_median(r.history["step_loss"], epoch_steps(r.history)[0], until)
    return lowest, (events[0].get("trailing_median") if events else None)


def loss_levels(folder: pathlib.Path) -> dict[str, dict[str, list[float]]]:
    """Per cell, how far each run had descended before its first divergence event (or in all)
    and the trailing median loss at that event: whether a remedy that did not diverge ever
    reached the loss at which `stable` did."""
    levels: dict[str, dict[str, list[float]]] = {}
    for key, r in runs(folder).items():
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


def _margin(reached: list[float], levels: list[float]) -> str:
    """How far above the highest divergence level the lowest loss reached stayed (a near miss is not a test)."""
    percent = 100 * (min(reached) / max(levels) - 1)
    return f"{percent:.2g} %" if percent < 10 else f"{percent:.0f} %"


def _within(reached: list[float], levels: list[float]) -> int:
    return sum(low <= max(levels) for low in reached)


def stable_event_levels(folders: list[pathlib.Path]) -> list[float]:
    """The 100-step median training loss just before each first divergence event of `stable` in
    `asrun`, over the seed folders (all machines)."""
    return [e for f in folders for e in loss_levels(f).get("stable@asrun", {}).get("at_event", [])]


def _below_highest(reached: list[float], levels: list[float], highest: float | None) -> str:
    """Runs that stayed above this machine's divergence levels but went below those of any machine."""
    k = sum(low <= highest for low in reached) if highest is not None and highest > max(levels) else 0
    return (f"; {k} of its {len(reached)} runs did go below the highest such level on any machine "
            f"({highest:.3g}), and the short batches they took there are counted in the exposure bullet") if k else ""


def at_stable_events(found: dict, arm: str, condition: str) -> tuple[list[float], list[float], list[float]]:
    """Per seed whose `stable` run in ``condition`` diverged and that ``arm`` also ran (``found``:
    one folder's runs): ``arm``'s 100-step median training loss and learning rate at the step of
    `stable`'s first divergence event, and `stable`'s learning rate there."""
    same_step, lr, ref_lr = [], [], []
    for key, r in found.items():
        events = r.verdict.get("outcome_details", {}).get("events", [])
        twin = found.get(dataclasses.replace(key, arm=arm))
        # a twin stopped by a non-finite step before `stable`'s event has no value there
        if (key.arm == "stable" and key.condition == condition and events and twin
                and events[0]["step"] < len(twin.history["lr"])):
            step = events[0]["step"]
            same_step.append(float(trailing_median(np.asarray(twin.history["step_loss"], float))[step]))
            lr.append(twin.history["lr"][step])
            ref_lr.append(r.history["lr"][step])
    return same_step, lr, ref_lr


def levels_sentence(folder: pathlib.Path, highest: float | None = None) -> str | None:
    """Did a remedy that diverged less train down to where `stable` diverged? Per seed, the
    remedy's 100-step median at the step where the same seed's `stable` run diverged. ``highest``:
    the highest level at which `stable` diverged on any machine (the exposure's), named where a
    remedy stayed above this machine's levels but went below it."""
    found = runs(folder)
    levels, clauses = loss_levels(folder), []
    for cell, lv in levels.items():
        arm, condition = cell.split("@")
        ref = levels.get(f"stable@{condition}")
        if arm in ("stable", "control") or not ref or not ref["at_event"] or lv["at_event"] or not lv["lowest"]:
            continue
        same_step, lr, ref_lr = at_stable_events(found, arm, condition)
        where = level_word(lv["lowest"], ref["at_event"])
        epochs = max(len(r.history["val_loss"]) for key, r in found.items() if key.cell == cell)
        clauses.append(f"`{arm}`'s lowest 100-step median training loss after epoch 1 was {_range(lv['lowest'])}, "
                       f"against {_range(ref['at_event'])} just before `stable`'s divergence events on the same machine"
                       + (f"; at the steps where `stable` diverged, the same seeds' `{arm}` runs were at "
                          f"{_range(same_step)}, at a learning rate of {_range(lr)} against `stable`'s "
                          f"{_range(ref_lr)}" if same_step else "") + ": "
                       + ("it went below that level and did not diverge" if where == "below" else
                          f"{_within(lv['lowest'], ref['at_event'])} of its {len(lv['lowest'])} runs came down into that "
                          "range, none diverged, so these seeds test it there only as far as the short batches they "
                          "took there (the exposure bullet)" if where == "as low as" else
                          f"it descended more slowly and did not reach that level within {epochs} epochs "
                          f"(its closest run stayed {_margin(lv['lowest'], ref['at_event'])} above the highest of "
                          "those levels), so these seeds show fewer collapses in that time, not prevention"
                          + _below_highest(lv["lowest"], ref["at_event"], highest)))
    return ("; ".join(clauses) + f" (`{folder.name}`).") if clauses else None


def revisions_sentence(folders: list[pathlib.Path]) -> str | None:
    """Which code revisions each folder's arms trained at, where a folder mixes them: a seed
    retrained at another revision can take another trajectory (section 5)."""
    clauses = []
    for folder in folders:
        by_arm: dict[str, Counter] = {}
        for key, r in runs(folder).items():
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


def seeds_section(folders: list[pathlib.Path], longer: list[pathlib.Path] = ()) -> list[str]:
    lines = ["## 3. The remedies", "", "### From seeds at full scale", ""]
    rows = []
    for folder in [*folders, *longer]:
        levels, device = loss_levels(folder), folder_device(folder)
        trained = f", {trained_text(folder)}" if folder in longer else ""
        for c in folder_cells(folder).values():
            lv = levels.get(f"{c['arm']}@{c['condition']}", {"lowest": [], "at_event": []})
            rows.append(f"| `{folder.name}` ({device}{trained}) | {c['arm']} | {c['condition']} | {c['n']} | "
                        f"{outcome_text(c['outcomes'])} | {ci(c)} | {fisher_text(c)} | {median(c)} | "
                        f"{p_text(c['logrank_p_vs_stable'])} | {epochs(c)} | {fmt(c['best_val_loss'])} | "
                        f"{_range(lv['lowest'])} | {_range(lv['at_event'])} |")
    if not rows:
        return lines + ["No remedy arm has run from seeds at full scale yet.", ""]
    lines += ["Each folder is one machine; its arms differ in their recipe and share the seeds (initialisation "
              "and data order; code revisions below), so each remedy is tested against `stable` on the same "
              "machine (one-sided Fisher, in brackets the exact sign test over the seeds both arms ran, paired "
              "by seed; two-sided log-rank on the first divergence event; divergence epochs "
              "1-based). Training loss reached: the lowest 100-step median of the step loss after epoch 1, up to "
              "the run's first divergence event or its end, min–max over seeds; at the event: the same median "
              "just before it.", "",
              "| runs | arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | Fisher p vs stable | "
              "median time to divergence | log-rank p | divergence epochs | best val | training loss reached | "
              "training loss at the event |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    if longer:
        lines += ["Rows whose runs name a number of epochs were trained beyond the recipe's (`longer_*` folders): "
                  "a remedy there is tested only against a `stable` run of the same length in the same folder, where "
                  "there is one; what they show besides is whether the remedy, given the time, trains down to where "
                  "`stable` diverged and diverges there.", ""]
    highest = max(stable_event_levels(folders), default=None)
    for sentence in filter(None, [*(levels_sentence(f, highest) for f in folders),
                                  revisions_sentence([*folders, *longer])]):
        lines += [sentence, ""]
    for folder in folders:
        if (folder / "report" / "survival.png").exists():
            lines += [f"![Time to the first divergence event, `{folder.name}`]({folder}/report/survival.png)", ""]
        # where a remedy follows a schedule: where in it the runs diverged (its LR at `stable`'s events)
        scheduled = any(r.config.optim.scheduler != "constant" for r in runs(folder).values())
        if scheduled and (folder / "report" / "lr.png").exists():
            lines += [f"![Learning rate applied at each step, each run's first divergence event marked, "
                      f"`{folder.name}`]({folder}/report/lr.png)", ""]
    return lines


def rates_agree(a: dict, b: dict) -> bool:
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
                   conditions: tuple[str, ...] = ("asrun", "fixed"),
                   longer: list[tuple[str, str, dict, dict]] = ()) -> list[str]:
    """Per arm and condition, every line of evidence from seeds: each full-scale source's cell
    (``sources``: label, machine, cells, training-loss levels; a cell whose seeds on the same
    machine an earlier source's cell already holds is not repeated: the folders link the same
    runs), each cell of the runs trained beyond the recipe (``longer``, alike; not a confirmation
    of the proxy, whose recipe they do not share) and the proxy factorial's, with whether the full
    scale confirms the proxy; "not run" where none exists."""
    rows, shown = [], []

    def row(label: str, cell: dict, levels: dict, condition: str) -> tuple:
        reached = _range(levels.get(key, {}).get("lowest", []))
        events = _range(levels.get(f"stable@{condition}", {}).get("at_event", []))
        return label, cell, f"{reached} ({events})", "–"

    for arm in stage_a.SPEC_ARMS:
        for condition in conditions:
            key, found = f"{arm}@{condition}", []
            for label, device, cells, levels in sources:
                cell = cells.get(key)
                if cell and not any((k, d) == (key, device) and set(cell["seeds"]) <= seeds for k, seeds, d in shown):
                    shown.append((key, set(cell["seeds"]), device))
                    found.append(row(label, cell, levels, condition))
            full = [c for _, c, _, _ in found]
            found += [row(label, cells[key], levels, condition) for label, _, cells, levels in longer if key in cells]
            if key in factorial:
                confirmed = ("not run at full scale" if not full else
                             "yes" if all(rates_agree(factorial[key], c) for c in full) else "no")
                found.append(("proxy (`factorial`)", factorial[key], "–", confirmed))
            for label, c, level, confirmed in found:
                rows.append(f"| {arm} | {condition} | {label} | {c['n']} | {ci(c)} | "
                            f"{fisher_text(c)} | {median(c)} | {level} | {confirmed} |")
            if not found:
                rows.append(f"| {arm} | {condition} | {_not_run(arm, condition, sources)} "
                            "| – | – | – | – | – | – |")
    note = ("" if factorial else " No proxy scale is calibrated (section 2), so there is no proxy answer to "
            "confirm: every number here is full scale.")
    return ["### Per remedy and condition", "",
            "Every cell of SPEC §7's arms × {" + ", ".join(conditions) + "} with the runs from seeds behind it "
            "(each machine separately: a remedy is tested only against `stable` on the same machine; one-sided "
            "Fisher, in brackets the exact sign test over the seeds both arms ran, paired by seed; median time to "
            "divergence: Kaplan–Meier, in 0-based global steps, of the first divergence event "
            "whether or not the run collapsed; training loss reached: "
            "the lowest 100-step median after epoch 1 up to a first divergence event, min–max over seeds, with "
            "`stable`'s just before its events on the same machine in brackets: a remedy whose runs stayed above "
            "that level was not tested where `stable` diverged). Branches, which are trajectories and not seeds, "
            "are in the answer above and section 3." + note, "",
            "| arm | condition | runs from | seeds | P(collapse) [95 % Wilson] | Fisher p vs stable | "
            "median time to divergence | training loss reached (`stable`'s at its events) | "
            "proxy confirmed at full scale |",
            "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def how(cell: dict) -> str:
    constant = cell["outcomes"].get("collapsed_constant", 0)
    if constant:
        return f"{constant} of them ending at a constant output"
    diverged = cell["outcomes"].get("diverged")
    return "by divergence rather than to a constant output" if diverged else "without divergence"


def seeds_sentence(folders: list[pathlib.Path]) -> str | None:
    """The full-scale seed cells: `stable` and each remedy against it, per machine."""
    parts = []
    for folder in folders:
        cells, device = folder_cells(folder), folder_device(folder)
        for condition in sorted({c["condition"] for c in cells.values()}):
            ref = cells.get(f"stable@{condition}")
            remedies = [c for c in cells.values()
                        if c["condition"] == condition and c["arm"] not in ("stable", "control")]
            if not ref or not remedies:
                continue
            constant = sorted(r.verdict["outcome_details"]["events"][0]["epoch"] + 1
                              for key, r in runs(folder).items()
                              if key.cell == f"stable@{condition}" and r.verdict["outcome"] == "collapsed_constant"
                              and r.verdict["outcome_details"]["events"])
            parts.append(
                f"On {'the CPU' if device == 'cpu' else device} (`{folder.name}`, `{condition}`"
                + (", each remedy's seeds among `stable`'s" if all(set(c["seeds"]) <= set(ref["seeds"])
                                                                for c in remedies) else "") +
                f"): `stable` collapsed in {ci(ref)} (outcomes: {outcome_text(ref['outcomes'])}; "
                f"first divergence events in epochs {epochs(ref)}"
                + (f"; {len(constant)} of its collapses ended at upstream's constant output, the plateau, after a "
                   f"divergence event in epoch{'s' if len(constant) > 1 else ''} {', '.join(map(str, constant))}"
                   if constant else "") + "), while "
                + "; ".join(f"`{c['arm']}` collapsed in {ci(c)} (one-sided Fisher p {fisher_text(c, inline=True)}, "
                            f"two-sided log-rank p {p_text(c['logrank_p_vs_stable'])} against `stable`)"
                            for c in remedies) + ".")
    return " ".join(parts) or None


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
        cells, levels = folder_cells(folder), loss_levels(folder)
        for key in sorted(k for k in cells if k.startswith("control@")):
            control = cells[key]
            condition = control["condition"]
            stable = cells.get(f"stable@{condition}")
            if not stable:
                continue
            lowest = levels.get(key, {}).get("lowest", [])
            ref = levels.get(f"stable@{condition}", {}).get("at_event", [])
            parts.append(
                f"in `{condition}` on {folder_device(folder)} (`{folder.name}`) the hybrid `control` "
                f"({stage_a.ARMS['control'].description}) collapsed in {ci(control)} (outcomes: "
                f"{outcome_text(control['outcomes'])}"
                + (f"; first divergence events in epochs {epochs(control)}" if control["divergence_epochs"] else "")
                + "), `stable` in "
                f"{ci(stable)} "
                f"(for fewer collapses with the hybrid: one-sided Fisher p {fisher_text(control, inline=True)})"
                + (f"; the hybrid's lowest 100-step median training loss was {_range(lowest)}"
                   + (f", against {_range(ref)} just before `stable`'s divergence events"
                      + (", so it never trained down to where `stable` diverged"
                         if level_word(lowest, ref) == "above" else "") if ref else "")
                   if lowest else ""))
    if not parts:
        return None
    return ("Upstream concluded that the collapse is architectural (`stable_hybrid` collapses where the hybrid "
            "generator does not). At full scale, " + "; ".join(parts) + " (the control also clips; see the caveats).")
