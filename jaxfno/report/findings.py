"""FINDINGS.md: the study's answer, written from the committed runs (never typed by hand).

Sections, each from its folder of finished runs (study layout ``<condition>/<arm>/seed<s>``):
the fidelity check at full scale, the proxy calibration, the remedies from seeds (full scale,
``seeds_<machine>``, and trained beyond the recipe's epochs, ``longer_<machine>``; proxy
factorial) and from branches, the branch experiments. A section whose runs do not exist yet says so.
"""

from __future__ import annotations

import pathlib
import platform
from collections.abc import Sequence

from jaxfno.data.simulate import n_positions
from jaxfno.evaluation.outcomes import AHEAD, BEHIND, DIVERGENCE_RATIO
from jaxfno.provenance import code_commit
from jaxfno.report.branches import (NULL_GROUP, branch_rows, inherited, loss_range as _range,
                                   null_perturbation_section, pooled_section, pooled_sentence, pooled_summary,
                                   trajectories)
from jaxfno.report.cells import ci, dirs, epochs, fisher_text, fmt, load_run, median, p_text, runs, unique
from jaxfno.report.cells import cells as folder_cells, device as folder_device
from jaxfno.report.exposure import (ALPHA, Exposure, Group, exposure, exposure_section, exposure_sentence,
                                    group_name, no_event_chance, runs_needed)
from jaxfno.report.mechanism import kick_section, kick_sentence
from jaxfno.report.report_only import read_reports, report_only_section, report_only_sentence
from jaxfno.report.reruns import rerun_section, rerun_sentence
from jaxfno.report.seeds import (architecture_caveat, architecture_sentence, how, level_sentence, levels_sentence,
                                 longer_folders, longer_sentence, loss_levels, matrix_section, rates_agree,
                                 seed_folders, seeds_section, seeds_sentence, stable_event_levels, trained_text)
from jaxfno.report.study import outcome_text
from jaxfno.study import stage_a

UPSTREAM = ("Upstream (SPEC §8): `stable_hybrid` reached val ≈ 0.024 by epoch 4–6 and then went exactly "
            "constant (amp SSIM 0.277 = the floor, val ≈ 0.18–0.20), in every arm it reported, and concluded "
            "that \"the collapse is architectural\".")


def fidelity_section(folder: pathlib.Path) -> tuple[list[str], dict]:
    cells = folder_cells(folder)
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
                     f"{', '.join(map(str, c['epochs']))} | {outcome_text(c['outcomes'])} | {ci(c)} | {epochs(c)} | "
                     f"{fmt(c['best_val_loss'])} | {fmt(c['final_val_loss'])} | {fmt(c['final_contrast'], 3)} |")
    lines += ["", UPSTREAM, ""]
    if (folder / "report" / "survival.png").exists():
        lines += [f"![Time to the first divergence event, full scale]({folder}/report/survival.png)", ""]
    return lines, cells


def calibration_section(folder: pathlib.Path, reference: dict, reference_levels: dict = {}) -> list[str]:
    lines = ["## 2. Proxy calibration (SPEC §7.3)", ""]
    scales = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    rows = []
    for scale_dir in scales:
        levels = loss_levels(scale_dir)
        for c in folder_cells(scale_dir).values():
            ref = reference.get(f"stable@{c['condition']}")
            cell = f"{c['arm']}@{c['condition']}"
            reached = _range(levels.get(cell, {}).get("lowest", []))
            ref_events = _range(reference_levels.get(f"stable@{c['condition']}", {}).get("at_event", []))
            verdict = "–"
            if ref:
                inside = rates_agree(ref, c)
                verdict = "yes" if inside else "no"
                if inside and c["collapsed"] == 0 and ref["collapsed"] == 0:
                    verdict = "yes, but neither collapses: nothing for a remedy to prevent"
            s = stage_a.SCALES.get(scale_dir.name)
            size = (f"width {s.width}, {s.train_subset or n_positions(4) ** 2} patterns, {s.epochs} epochs"
                    + (f" (stops after {s.stop_after})" if s and s.stop_after else "")) if s else "?"
            rows.append(f"| {scale_dir.name} | {size} | {c['arm']} | {c['condition']} | {c['n']} | "
                        f"{outcome_text(c['outcomes'])} | {ci(c)} | {epochs(c)} | {fmt(c['best_val_loss'])} | "
                        f"{fmt(ref['best_val_loss']) if ref else '–'} | {reached} | {ref_events} | {verdict} |")
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


def exposure_groups(folders: list[pathlib.Path], branch_folders: list[pathlib.Path], level: float,
                    pooled: dict, proxies: Sequence[pathlib.Path] = (),
                    longer: Sequence[pathlib.Path] = ()) -> list[Group]:
    """Each cell of the full-scale runs from seeds (``folders``: a run linked into two folders
    counts once; the zero-phase object's cells, whose losses are another problem's, left out),
    each change of the branches pooled over their branch points (``pooled``: their
    ``pooled_summary``, which names each group's change), each proxy candidate's cell whose
    runs trained down to ``level`` (``proxies``; those that did not are section 2's), and each
    cell of the runs trained beyond the recipe's epochs (``longer``), as exposure groups."""
    seen: set[pathlib.Path] = set()

    def cells(folder: pathlib.Path) -> dict[tuple[str, str], tuple[Exposure, ...]]:
        found: dict[tuple[str, str], list[Exposure]] = {}
        for key, r in runs(folder).items():
            if stage_a.CONDITIONS[key.condition].set_phi and r.run_dir.resolve() not in seen:
                seen.add(r.run_dir.resolve())
                found.setdefault((key.arm, key.condition), []).append(exposure(r, level))
        return {cell: tuple(e) for cell, e in found.items()}

    groups = [Group(f"`{folder.name}`", arm, condition, folder_device(folder), e)
              for folder in folders for (arm, condition), e in cells(folder).items()]
    groups += [Group(f"`{folder.name}`", arm, condition, folder_device(folder), e,
                     epochs=max(len(r.history["val_loss"]) for key, r in runs(folder).items()
                                if (key.arm, key.condition) == (arm, condition)))
               for folder in longer for (arm, condition), e in cells(folder).items()]
    proxy_groups = [Group(f"`calibration/{folder.name}`", arm, condition, folder_device(folder), e, folder.name)
                    for folder in proxies for (arm, condition), e in cells(folder).items()
                    if any(x.short_batches for x in e)]
    branches: dict[str, list] = {}
    for folder in branch_folders:
        for name, rows in (branch_rows(folder) if folder.exists() else {}).items():
            for row in rows:
                r = load_run(folder / row["run"])
                branches.setdefault(name, []).append((stage_a.run_device(r.history),
                                                      exposure(r, level, row["first_step"])))
    for name, found in branches.items():
        groups.append(Group("branches", pooled[name]["change"], "asrun", ", ".join(sorted({d for d, _ in found})),
                            tuple(e for _, e in found)))
    return groups + proxy_groups


def factorial_section(folder: pathlib.Path, confirm: dict) -> list[str]:
    cells = folder_cells(folder)
    lines = ["### Factorial at proxy scale", ""]
    if not cells:
        return lines + ["Not run yet: the factorial (SPEC §7's six arms × asrun, fixed × ≥ 8 seeds) waits for a "
                        "calibrated proxy scale.", ""]
    lines += ["| arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | Fisher p vs stable | "
              "median time to divergence | log-rank p | confirmed at full scale |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cells.values():
        full = confirm.get(f"{c['arm']}@{c['condition']}")
        confirmed = "not run" if full is None else f"{ci(full)}"
        lines.append(f"| {c['arm']} | {c['condition']} | {c['n']} | {outcome_text(c['outcomes'])} | {ci(c)} | "
                     f"{fisher_text(c)} | {median(c)} | {p_text(c['logrank_p_vs_stable'])} | "
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


def _calibration_sentence(folder: pathlib.Path, fidelity: dict) -> str | None:
    """Whether any proxy candidate reproduced the full-scale `asrun` rate of `stable`."""
    ref = fidelity.get("stable@asrun")
    if ref is None or not folder.exists():
        return None
    tried = []
    for scale_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        cell = folder_cells(scale_dir).get("stable@asrun")
        if cell:
            low, high = ref["p_collapse_wilson95"]
            inside = low <= cell["p_collapse"] <= high
            tried.append(f"{scale_dir.name} {ci(cell)} ({'inside' if inside else 'outside'} the full-scale interval)")
    if not tried:
        return None
    return ("At proxy scale, `stable` in `asrun` collapsed in " + "; ".join(tried) +
            ": a factorial there tests the remedies only where a candidate reproduces the full-scale rate.")


def bottom_line(seed_cells: list[tuple[str, dict]], exposed: list[Group], branches: dict,
                fidelity: dict = {}, longer_arms: frozenset[str] = frozenset()) -> str | None:
    """The answer in one paragraph: `stable`'s collapse rate from seeds in `asrun`, each remedy's
    with whether its runs took short batches where `stable` diverged, the branches, and the arms
    not yet tested there (``seed_cells``: machine, cells; ``branches``: ``pooled_summary``;
    ``fidelity``: the fidelity check's cells, which say whether `asrun` is the only condition
    that collapsed; ``longer_arms``: arms trained beyond the recipe in `asrun`, not "not run")."""
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
    group_of = {(g.what, g.device): g for g in exposed if g.label != "branches"
                and g.condition == "asrun" and g.scale == "full" and g.epochs is None}
    remedies = [(device, c) for device, cells in seed_cells for c in cells.values()
                if c["condition"] == "asrun" and c["arm"] not in ("stable", "control")]
    tested = [(device, c, group_of[(c["arm"], device)]) for device, c in remedies
              if (c["arm"], device) in group_of and group_of[(c["arm"], device)].short_batches]
    if remedies:
        text += (" From seeds, " + ", ".join(f"`{c['arm']}` collapsed in {c['collapsed']}/{c['n']} on {device} "
                                            f"(Fisher p {fisher_text(c, inline=True)})" for device, c in remedies))
        tested_cells = {(device, c["arm"]) for device, c, _ in tested}
        untested = [f"`{c['arm']}` on {device}" for device, c in remedies if (device, c["arm"]) not in tested_cells]
        text += ("; " + ", ".join(untested) + " never trained down to the loss at which `stable` diverged (no short "
                   "batch taken there), so those seeds show "
                   f"fewer collapses within {max(e for _, c in remedies for e in c['epochs'])} epochs, not "
                   "prevention." if untested else ".")
        # a remedy that did come down to that loss: how many short batches it took there, and what that says
        text += "".join(f" `{c['arm']}` on {device} took {g.short_batches} short batches at or below the highest "
                        "loss at which a `stable` run from seeds diverged on any machine, with "
                        f"{g.events} first divergence event{'s' if g.events != 1 else ''}"
                        + _few_text(no_event_chance(g, exposed), runs_needed(g, exposed)) + "."
                        for device, c, g in tested)
    longer = [g for g in exposed if g.epochs and g.condition == "asrun"]
    if longer:
        text += " Trained beyond the recipe, " + "; ".join(
            f"{group_name(g)} took {g.short_batches} short batches at the loss where `stable` diverged, with "
            f"{g.events} first divergence "
            f"event{'s' if g.events != 1 else ''} ({len(g.exposures)} run{'s' if len(g.exposures) != 1 else ''}"
            + _chance_text(no_event_chance(g, exposed)) + ")" for g in longer) + "."
    null = branches.get(NULL_GROUP)
    if null:
        taken = {g.what: g for g in exposed if g.label == "branches"}
        others = [s for name, s in branches.items() if name != NULL_GROUP]
        text += (f" From states before a divergence ({trajectories(null['sources'])}), the branches that "
                 "changed only the data "
                 f"order collapsed in {null['collapsed']['k']}/{null['n']}, "
                 + ", ".join(f"those with {s['change']} in {s['collapsed']['k']}/{s['n']}"
                             + (f" (a divergence event in {s['event']['k']}/{s['n']}{inherited(s, ', ')}, "
                                "recovered from)"
                                if s["event"]["k"] > s["collapsed"]["k"] else "")
                             + (f" after {taken[s['change']].short_batches} short batches at that loss"
                                if s["change"] in taken else "") for s in others) + ".")
        text += _lr_bridge([g for _, _, g in tested if (no_event_chance(g, exposed) or 0) > ALPHA], others, taken,
                           exposed)
    missing = [f"`{arm}`" for arm in stage_a.SPEC_ARMS if arm not in ("control", "stable")
               and not any(arm == c["arm"] for _, c in remedies) and arm not in longer_arms]
    if missing:
        text += " Not yet run from seeds in `asrun`: " + ", ".join(missing) + "."
    return text


def _lr_bridge(undecided: list[Group], others: list[dict], taken: dict[str, Group], exposed: list[Group]) -> str:
    """Where a remedy's seeds took too few short batches at `stable`'s divergence level to tell
    prevention from delay, but took them at a learning rate no higher than that of branches that
    lowered only the LR and took enough short batches there (after their branch points) without
    any event: say so, as a link through the mechanism (the branches test `stable`'s states, not
    the remedy's)."""
    lowered = [(s, float(s["changed"]["optim.lr"]), taken[s["change"]]) for s in others
               if s.get("changed") and set(s["changed"]) == {"optim.lr"} and s["change"] in taken
               and not s["event"]["k"] and s.get("windows")
               and (no_event_chance(taken[s["change"]], exposed, own=True) or 1) <= ALPHA]
    clauses = []
    for g in undecided:
        # the history's float32 learning rate against the config's decimal one
        match = [(s, value, b) for s, value, b in lowered if g.own_lrs and max(g.own_lrs) <= value * (1 + 1e-6)]
        if match:
            s, _, b = max(match, key=lambda m: m[1])
            clauses.append((f"`{g.what}` on {g.device}", g.own_lrs, s, b))
    if not clauses:
        return ""
    s, b = clauses[0][2], clauses[0][3]  # the same group for every remedy: the highest qualifying LR
    spans = sorted({last - point for point, last in s["windows"]})
    span = "–".join(map(str, dict.fromkeys([spans[0], spans[-1]])))
    inherited_short = b.short_batches - b.own_short_batches
    return (" " + "; ".join(f"{who} took its {len(lr)} short batches at that loss at a learning rate of {_range(lr)}"
                            for who, lr, _, _ in clauses)
            + f", no higher than the branches with {s['change']} ({b.device}), which took {b.own_short_batches} "
            "short batches at that loss after their branch points"
            + (f" ({b.short_batches} with the source's just before each point, whose aftermath they trained)"
               if inherited_short else "")
            + " without any divergence event (the chance of none at `stable`'s rate "
            f"{no_event_chance(b, exposed, own=True):.2g}, were the short batches independent, which those from one "
            "state are not): from `stable`'s own states just before a divergence, a learning rate that low kept the "
            f"loss from diverging over the {span} epoch{'s' if spans[-1] != 1 else ''} the branches ran, which is "
            "consistent with prevention by a low learning rate where the loss is that low; but the branches test "
            "`stable`'s states over a few epochs, not the remedies' own states over theirs.")


def _few_text(chance: float | None, more: int | None = None) -> str:
    """The no-event probability of a remedy's seeds at `stable`'s rate, whether they tell
    prevention from delay, and (``more``) how many more such runs without an event would."""
    if chance is None:
        return ""
    return (f" (at `stable`'s per-short-batch rate on that machine, the chance of none in that many: {chance:.2g}"
            + ("; too few short batches to tell prevention from delay" if chance > ALPHA else "")
            + (f": at the short batches per run taken so far, about {more} more runs without an event would bring "
               f"that chance below {ALPHA:g}" if more else "") + ")")


def _chance_text(chance: float | None) -> str:
    """The no-event probability beside a count of 0 events, and whether it says much."""
    if chance is None:
        return ""
    return (f"; the chance of none in that many at `stable`'s per-short-batch rate: {chance:.2g}"
            + (", so weak evidence" if chance > ALPHA else ""))


def answer_paragraph(fidelity: dict, factorial: dict, extra: list[tuple[str, str | None]] = (),
                     seeds: dict = {}) -> str:
    """The answer, one labelled bullet per line of evidence, from the cells and the ``extra``
    (label, sentence) pairs (nothing typed by hand)."""
    parts = []
    asrun, zero, fixed = (fidelity.get(f"stable@{c}") for c in ("asrun", "asrun_zero_phase", "fixed"))
    if zero:
        few = zero["collapsed"] == 0 and zero["p_collapse_wilson95"][1] >= 0.5
        verdict = ("Upstream's early collapse was not seen at full scale" if zero["collapsed"] == 0
                   else "Upstream's early collapse reproduced at full scale")
        parts.append(f"{verdict}: on the zero-phase object with the batch gain and the short last batch (SPEC "
                     f"§10's lead) `stable` collapsed in {ci(zero)} of its seeds within {max(zero['epochs'])} "
                     f"epochs (outcomes: {outcome_text(zero['outcomes'])})"
                     + (", too few seeds to rule it out" if few else "")
                     + (f", a shorter run than `asrun`'s {max(asrun['epochs'])} epochs"
                        if asrun and max(asrun["epochs"]) > max(zero["epochs"]) else "") + ".")
    if asrun:
        parts.append(f"On the phase object (set_phi on; `asrun`: the gain and the short batch, {max(asrun['epochs'])} "
                     f"epochs) it collapsed in "
                     f"{ci(asrun)} (outcomes: {outcome_text(asrun['outcomes'])}), late (epochs "
                     f"{epochs(asrun)}), {how(asrun)}.")
    if fixed:
        parts.append(f"In the `fixed` condition (SPEC as written) it collapsed in {ci(fixed)} "
                     f"(outcomes: {outcome_text(fixed['outcomes'])}).")
    bullets = [("Where it collapses (full scale, CPU)", " ".join(parts))] if parts else []
    for c in factorial.values():
        if c["arm"] not in ("stable", "control"):
            bullets.append(("Proxy factorial", f"`{c['arm']}` in `{c['condition']}`: P(collapse) {ci(c)}, one-sided "
                            f"Fisher p {fisher_text(c, inline=True)} against `stable`."))
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
    "Every p value is one-sided where it tests a remedy and none is corrected for multiplicity: up to five "
    "remedies, and two branch changes, are each held against the same `stable` runs or null branches, so a p "
    "just under 0.05 alone is weak evidence (Bonferroni over five remedies would ask for p < 0.01). Paired by "
    "seed, the sign test uses only the seeds whose outcomes differ between the two arms: a weaker test than "
    "Fisher's here, and a seed's pairing is loose, since even one recipe trained twice from one seed parts at "
    "rounding level within a few steps (section 5).",
    "`cpu` pools this project's CPU runs, which come from more than one CPU model (an AMD EPYC, and from "
    "2026-12-05 an Intel Xeon; each folder's README names them, and runs record the model from commit 3100a07 "
    "on): like two code revisions, two CPU models in float32 differ in rounding, not in precision, so their "
    "seeds are pooled; a GPU's runs (TF32 convolutions) are kept apart.",
]


WARMUP_NOTE = ("Warmup-cosine (`stable_warmup` and its combinations) has no branches: its schedule starts at the "
               "first step, so switching it on mid-run would test another recipe; its evidence can only come from "
               "seeds. These branches are full scale.")


# the null-perturbation branches of the rerun, one folder per branch point: after epoch 17 (the
# last checkpoint before its divergence) and after epoch 16 (its best, before the epoch-17 kick)
BRANCH_POINTS = (("branches", "rerun/seed20260128"), ("branches_e16", "rerun/seed20260128"),
                 # other sources', after an epoch before their first divergence event
                 ("branches_seed20260129_e*", "rerun/seed20260129"),
                 ("branches_seed20260131_e*", "seeds_cpu/asrun/stable/seed20260131"),
                 ("branches_seed20260132_e*", "seeds_cpu/asrun/stable/seed20260132"),
                 ("branches_seed20260133_e*", "seeds_cpu/asrun/stable/seed20260133"))


def branch_points(full: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(branch folder, its source run) of every branch point under ``full`` (patterns expanded;
    the first source's folders listed even before they exist)."""
    points = []
    for pattern, source in BRANCH_POINTS:
        folders = sorted(full.glob(pattern)) if "*" in pattern else [full / pattern]
        points += [(folder, full / source) for folder in folders]
    return points


def _sources(folders: list[pathlib.Path], longer: bool = False) -> list[tuple[str, str, dict, dict]]:
    """The per-remedy matrix's full-scale sources: label, machine, cells, training-loss levels."""
    return [(f"full scale, {device}" + (f", {trained_text(folder)}" if longer else "") + f" (`{folder.name}`)",
             device, folder_cells(folder), loss_levels(folder))
            for folder in folders for device in [folder_device(folder)]]


def write_findings(root: pathlib.Path, out: pathlib.Path, caveats: list[str] = CAVEATS) -> str:
    """Assemble FINDINGS.md from ``root``'s results folders."""
    fidelity_lines, fidelity = fidelity_section(root / "stage_a_full_asrun" / "fidelity")
    full = root / "stage_a_full_asrun"
    seeds = seed_folders(full)
    seed_cells = {folder: folder_cells(folder) for folder in seeds}
    confirm = {key: cell for cells in seed_cells.values() for key, cell in cells.items()}
    full_runs = sorted(full.glob("fidelity/*/stable/seed*")) + sorted(full.glob("rerun/seed*"))
    seed_runs = [run for folder in seeds for run in sorted(folder.glob("*/*/seed*"))]
    # reports printed on a device whose runs did not come back: quoted apart, counted nowhere
    reports = read_reports(sorted(p for p in full.glob("*_report_only") if p.is_dir()),
                           {(folder_device(folder), key) for folder, cells in seed_cells.items() for key in cells})
    quoted = report_only_section(reports)
    # where it collapses, the remedies from seeds, from branches, why, then what limits the evidence
    architecture = architecture_sentence(seeds)
    # the level of `stable`'s first divergence events from seeds, and who took short batches there
    at_events = stable_event_levels(seeds)
    level = max(at_events, default=None)
    seeds_text = " ".join(filter(None, [seeds_sentence(seeds), *(levels_sentence(f, level) for f in seeds)])) or None
    factorial = folder_cells(root / "stage_a_proxy" / "factorial")
    longer = longer_folders(full)
    branch_folders = [f for f, _ in branch_points(full)]
    pooled = pooled_summary(branch_folders)
    exposed = exposure_groups([*seeds, full / "fidelity"], branch_folders, level, pooled,
                              dirs(root / "stage_a_proxy" / "calibration"), longer) if level else []
    answer = answer_paragraph(fidelity, factorial, [
        ("Remedies from seeds (full scale)", seeds_text),
        ("Trained beyond the recipe (full scale)", longer_sentence(longer, exposed, at_events)),
        ("Reported, runs not retrieved (full scale)", report_only_sentence(reports)),
        ("How far the runs descended", level_sentence(list({
            r.run_dir.resolve(): (f"{key.arm} ({folder.name})", r) for folder in [full / "fidelity", *seeds]
            for key, r in runs(folder).items()
            if key.condition == "asrun"}.values()))),  # a run linked into two folders counts once
        ("Exposure", exposure_sentence(exposed, level) if exposed else None),
        (f"Remedies from branches (full scale, CPU, {trajectories(pooled.get(NULL_GROUP, {}).get('sources', 1))})",
         pooled_sentence([folder for folder, _ in branch_points(full)])),
        # independent trajectories only: the rerun repeats a seed of the fidelity runs
        ("Mechanism", kick_sentence(unique(sorted(full.glob("fidelity/*/stable/seed*"))
                                            + [run for run in seed_runs if run.parent.name == "stable"]))),
        ("Proxy", _calibration_sentence(root / "stage_a_proxy" / "calibration", fidelity)),
        ("Rounding", rerun_sentence(full / "rerun", full / "fidelity" / "asrun" / "stable")),
        ("Architecture (upstream's conclusion)", architecture)],
        {**confirm, **{f"{folder.name}/{key}": c for folder in longer for key, c in folder_cells(folder).items()}})
    text = "\n".join([
        "# Findings: does a lower learning rate, warmup-cosine or clipping keep `stable_hybrid` from collapsing?",
        "",
        f"Written by `jaxfno findings` at commit {code_commit()} on {platform.machine()} from the runs under "
        f"`{root}`; every number below is read from them"
        + (" except those quoted from a device's report of runs that did not come back" if quoted else "")
        + (", upstream's" if quoted else " except upstream's") + " (quoted from SPEC §8) and the rules' constants"
        + ". Outcomes are SPEC §6.3's; collapse = non_finite, "
        "collapsed_constant or diverged. Epochs are 1-based; steps are 0-based global step indices. Terms: a "
        f"*divergence event* is a step from which the median training loss of {AHEAD} steps exceeds "
        f"{DIVERGENCE_RATIO:g} × that of the {BEHIND} before (SPEC §6.3; a run's first one is its time to "
        "divergence); the *short batch* is each epoch's last, smaller batch, to which upstream's batch gain (the "
        "probe scaled by the batch's sample count) gives a large loss and gradient (section 6); the *fidelity "
        "check* (section 1) asks which of upstream's as-run conditions collapse here; *branches* continue one run from one of its "
        "checkpoints with one change (section 4).",
        "",
        "## The answer so far",
        "",
        *([line, ""] if (line := bottom_line([(folder_device(f), seed_cells[f]) for f in seeds], exposed,
                                              pooled, fidelity,
                                              frozenset(c["arm"] for f in longer for c in folder_cells(f).values()
                                                        if c["condition"] == "asrun")))
          else []),
        answer,
        "",
        *matrix_section(_sources([*seeds, full / "fidelity"]), factorial, longer=_sources(longer, longer=True)),
        *fidelity_lines,
        *calibration_section(root / "stage_a_proxy" / "calibration", fidelity,
                             loss_levels(root / "stage_a_full_asrun" / "fidelity")),
        *seeds_section(seeds, longer),
        *quoted,
        *(exposure_section(exposed, level) if exposed else []),
        *factorial_section(root / "stage_a_proxy" / "factorial", confirm),
        *pooled_section([folder for folder, _ in branch_points(full)], WARMUP_NOTE),
        *branch_section(branch_points(full), [root / "stage_a_full_cpu_upstream_gain" / "branches",
                         root / "stage_a_full_cpu_upstream_gain" / "branches_seed20260130"]),
        *rerun_section(full / "rerun", full / "fidelity" / "asrun" / "stable"),
        *kick_section(unique(full_runs + seed_runs), root),
        "## Caveats",
        "",
        *[f"- {c}" for c in [*caveats, architecture_caveat(architecture is not None)]],
        "",
    ])
    out.write_text(text)
    return text
