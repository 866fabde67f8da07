"""Null-perturbation branch experiments (issue 21 item 5): branches of one run from one checkpoint,
grouped by what they change, against the group that changes only the data-order seed.

A folder holds ``<group>_order<i>/`` run directories (each a finished ``jaxfno branch`` with its
``branch.json``). A group's change is read from the configs, not from its name: the keys in which
its runs' config differs from the null group's (``seed``), the data-order seed aside. Only what
happens after the branch point counts: events at earlier steps belong to the source.
"""

from __future__ import annotations

import pathlib
import re
from collections import defaultdict

import numpy as np

from jaxfno.evaluation.outcomes import AHEAD, COLLAPSE_OUTCOMES, epoch_steps, lowest_trailing_median
from jaxfno.io import read_json
from jaxfno.report.cells import load_run
from jaxfno.report.statistics import (fisher_less, km_median, paired_sign_less, stratified_fisher_less,
                                      wilson_interval)

NULL_GROUP = "seed"  # the branches that change only train.seed (the data order from the branch point)
_NAME = re.compile(r"^(?P<group>.+)_order(?P<order>\d+)$")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _row(run_dir: pathlib.Path, branch_epoch: int) -> dict:
    """A run's outcome after ``branch_epoch``: divergence events whose qualifying window (a step
    and the ``AHEAD`` - 1 after it) reaches past the branch point, so an event that the branch's
    own steps make is counted even where it starts on the last steps before them."""
    result = load_run(run_dir)
    start = int(np.sum(epoch_steps(result.history)[:branch_epoch]))
    details = result.verdict["outcome_details"]
    after = [e for e in details["events"] if e["step"] + AHEAD > start]
    # the largest loss of a full batch: with the batch gain every short last batch is ~8x a full one
    ends = np.cumsum(epoch_steps(result.history)) - 1
    loss = np.delete(np.asarray(result.history["step_loss"], float), ends)[start - branch_epoch:]
    return {"run": run_dir.name, "seed": result.config.train.seed, "config": _flat(result.config.to_dict()),
            "config_hash": result.config.config_hash(), "step_loss": result.history["step_loss"][:start],
            "branch_epoch": branch_epoch, "first_step": start,
            "steps_after": int(np.sum(epoch_steps(result.history))) - start,
            "source_hash": (read_json(run_dir / "branch.json")["source_config_hash"]
                            if (run_dir / "branch.json").exists() else None),
            "epochs": len(result.history["val_loss"]), "outcome": result.verdict["outcome"],
            "collapsed": result.verdict["outcome"] in COLLAPSE_OUTCOMES,
            "event": after[0] if after else None,
            # the first event begun on the source's steps (its window reaching past the branch point)
            "inherited": bool(after) and after[0]["step"] < start,
            "own_event": any(e["step"] >= start for e in after),  # one begun on the branch's own steps
            "lowest_after": lowest_trailing_median(result.history["step_loss"], start,
                                                   after[0]["step"] if after else None),
            "peak_loss": float(np.nanmax(loss)) if loss.size else None,
            "final_val": details["final_val_loss"], "contrast": details["contrast"]}


def branch_rows(folder: pathlib.Path) -> dict[str, list[dict]]:
    """Per group, one row per finished branch: its data-order seed, the branch point, the §6.3
    outcome and the first divergence event after the branch point."""
    groups = defaultdict(list)
    for run_dir in sorted(p for p in folder.iterdir() if (p / "verdict.json").exists()) if folder.exists() else []:
        match = _NAME.match(run_dir.name)
        if match:
            groups[match["group"]].append(_row(run_dir, read_json(run_dir / "branch.json")["epoch"] + 1))
    return dict(groups)


def source_row(folder: pathlib.Path, source: pathlib.Path, groups: dict[str, list[dict]]) -> dict | None:
    """The source's own continuation after the branch point, when ``source`` is the finished run
    the branches started from (its config hash is the one their ``branch.json`` names and its
    steps up to the branch point are theirs). Shown beside the branches, never counted: the branch
    point was chosen because the source diverged after it, so its outcome is not a random draw."""
    branches = [read_json(d / "branch.json") for d in folder.glob("*_order*") if (d / "branch.json").exists()]
    records = {(b["source_config_hash"], b["epoch"] + 1) for b in branches}
    null = groups.get(NULL_GROUP)
    if len(records) != 1 or not null or not (source / "verdict.json").exists():
        return None
    (source_hash, epoch), = records
    row = _row(source, epoch)
    same = row["config_hash"] == source_hash and row["step_loss"] == null[0]["step_loss"]
    return dict(row, run=f"{source.name} (the source's own continuation; not counted)") if same else None


def _changed(rows: list[dict], null: list[dict]) -> dict | None:
    """The config fields a group sets otherwise than the null group (None: no null group to read)."""
    if not null:
        return None
    ref = null[0]["config"]
    keys = sorted({k for r in rows for k, v in r["config"].items() if k != "train.seed" and ref.get(k) != v})
    return {k: rows[0]["config"][k] for k in keys}


def _change(rows: list[dict], null: list[dict]) -> str:
    changed = _changed(rows, null)
    if changed is None:
        return "?"
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "nothing but the data order"


ENDPOINTS = (("event", "a divergence event reaching past the branch point"), ("collapsed", "collapsed (§6.3)"))


def group_summary(groups: dict[str, list[dict]]) -> dict[str, dict]:
    """Per group and endpoint (a divergence event after the branch point: the survival endpoint of
    SPEC §7.2, which a few epochs after a divergence cannot turn into "recovered"; and the §6.3
    collapse) k/n with its Wilson interval and, for every group but the null one, the one-sided
    Fisher p that it reaches the endpoint less often than the null group."""
    null = groups.get(NULL_GROUP, [])
    out = {}
    for name, rows in groups.items():
        peaks = [r["peak_loss"] for r in rows if r["peak_loss"] is not None]
        out[name] = {"change": _change(rows, null), "n": len(rows),
                     "peak_loss": (min(peaks), max(peaks)) if peaks else None}
        for key, _ in ENDPOINTS:
            k, k0 = (sum(bool(r[key]) for r in rs) for rs in (rows, null))
            out[name][key] = {"k": k, "wilson95": wilson_interval(k, len(rows)),
                              "fisher_p_vs_null": None if name == NULL_GROUP or not null
                              else fisher_less(k, len(rows), k0, len(null))}
    return out


def _cell(s: dict, n: int) -> str:
    low, high = s["wilson95"]
    p = "" if s["fisher_p_vs_null"] is None else f", p {s['fisher_p_vs_null']:.3g}"
    return f"{s['k']}/{n} [{low:.2f}, {high:.2f}]{p}"


def null_perturbation_section(folder: pathlib.Path, source_note: str = "",
                              source: pathlib.Path | None = None) -> list[str]:
    groups = branch_rows(folder)
    if not groups:
        return ["### Null-perturbation branches", "", f"None finished yet in `{folder}`.", ""]
    own = source_row(folder, source, groups) if source is not None else None
    summary = group_summary(groups)
    first = next(iter(groups.values()))[0]
    name = source.name if source else "?"
    lines = [f"### Null-perturbation branches after epoch {first['branch_epoch']} of `{name}`", ""]
    lines += [f"Branches in `{folder}` from one checkpoint (after epoch {first['branch_epoch']}, step "
              f"{first['first_step']} onwards), grouped by what they change against the `{NULL_GROUP}` group, "
              "which changes only the data-order seed. " + source_note, "",
              "| group | change (from the configs) | branches | " + " | ".join(
                  f"{title} [95 % Wilson], one-sided Fisher p vs data order only" for _, title in ENDPOINTS)
              + " | largest full-batch step loss after the branch point (range) |",
              "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        peak = "–" if s["peak_loss"] is None else "–".join(dict.fromkeys(f"{v:.3g}" for v in s["peak_loss"]))
        lines.append(f"| {name} | {s['change']} | {s['n']} | "
                     + " | ".join(_cell(s[key], s["n"]) for key, _ in ENDPOINTS) + f" | {peak} |")
    lines += ["", "| branch | data-order seed | epochs | outcome (§6.3) | first divergence event reaching past the "
              "branch point | largest full-batch step loss after it | final val | final contrast |",
              "|---|---|---|---|---|---|---|---|"]
    for rows in ([own] if own else []), *groups.values():
        for r in rows:
            e = r["event"]
            event = "–" if e is None else (f"step {e['step']} (epoch {e['epoch'] + 1}), peak loss "
                                           f"{e['peak_loss']:.3g}")
            peak = "–" if r["peak_loss"] is None else f"{r['peak_loss']:.3g}"
            lines.append(f"| {r['run']} | {r['seed']} | {r['epochs']} | {r['outcome']} | {event} | {peak} | "
                         f"{r['final_val']:.4f} | {r['contrast']:.3f} |")
    return lines + [""]


def _delay(row: dict) -> tuple[int, bool]:
    """Steps from the branch point to the first divergence event (0 for an event that starts on
    the steps just before it), or to the run's end without one (censored)."""
    e = row["event"]
    return (max(0, e["step"] - row["first_step"]), True) if e else (row["steps_after"], False)


def pooled_summary(folders: list[pathlib.Path]) -> dict[str, dict]:
    """Per group, its branches over every branch point (folder) against the null group's: k/n per
    endpoint with its Wilson interval, the one-sided exact test stratified by branch point (only
    points where both groups ran), and the Kaplan–Meier median of the steps from the branch point
    to the first divergence event (None: not reached)."""
    points = [branch_rows(f) for f in folders]
    names = list(dict.fromkeys(name for groups in points for name in groups))
    # source runs numbered in the order their first branch point comes
    sources = list(dict.fromkeys(r["source_hash"] for groups in points for rows in groups.values() for r in rows))
    out = {}
    for name in names:
        strata = [(g[name], g.get(NULL_GROUP, [])) for g in points if name in g]
        rows = [r for rs, _ in strata for r in rs]
        changes = {_change(rs, null) for rs, null in strata}
        settings = [_changed(rs, null) for rs, null in strata]
        out[name] = {"change": " / ".join(sorted(changes)), "points": len(strata), "n": len(rows),
                     # the changed fields where every branch point changed the same ones alike
                     "changed": settings[0] if all(c == settings[0] for c in settings) else None,
                     # per branch point: (source run's number, branch epoch, collapsed, branches)
                     "per_point": [(sources.index(rs[0]["source_hash"]) + 1, rs[0]["branch_epoch"],
                                    sum(r["collapsed"] for r in rs), len(rs)) for rs, _ in strata],
                     "sources": len({r["source_hash"] for r in rows}),
                     "branch_epochs": sorted({r["branch_epoch"] for r in rows}),
                     # (branch point, last epoch trained): a truncated horizon tests over fewer epochs
                     "windows": sorted({(r["branch_epoch"], r["epochs"]) for r in rows}),
                     "median_delay": km_median(*zip(*map(_delay, rows))),
                     "lowest": [r["lowest_after"] for r in rows if r["lowest_after"] is not None],
                     # an event's size: a remedy's small excursion and a divergence both count as events
                     "peaks": [r["peak_loss"] for r in rows if r["peak_loss"] is not None],
                     # events counted because their window reaches past the branch point, begun on the source's steps
                     "inherited": sum(r["inherited"] for r in rows),
                     # of those, the branches whose own steps then set off another
                     "inherited_then_own": sum(r["inherited"] and r["own_event"] for r in rows),
                     "at_event": [r["event"]["trailing_median"] for r in rows
                                  if r["event"] and "trailing_median" in r["event"]]}
        for key, _ in ENDPOINTS:
            k = sum(bool(r[key]) for r in rows)
            tables = [(sum(bool(r[key]) for r in rs), len(rs), sum(bool(r[key]) for r in null), len(null))
                      for rs, null in strata if null]
            # the same data order in both groups at the same branch point makes a pair
            pairs = [(bool(r[key]), bool(n[key])) for rs, null in strata for r in rs for n in null
                     if n["seed"] == r["seed"]]
            out[name][key] = {"k": k, "wilson95": wilson_interval(k, len(rows)),
                              "p_vs_null": None if name == NULL_GROUP or not tables else stratified_fisher_less(tables),
                              "paired_p": None if name == NULL_GROUP or not pairs else paired_sign_less(pairs),
                              "pairs": len(pairs)}
    return out


def inherited(s: dict, lead: str = "; ") -> str:
    """How many of a group's counted events began on the source's steps before the branch point,
    and in how many of those branches a second one began after it."""
    k, events, then_own = s["inherited"], s["event"]["k"], s.get("inherited_then_own", 0)
    if not k:
        return ""
    how_many = "" if k == events == 1 else f"{'all' if k == events else k} of them "
    second = f", {then_own} of those branches with a second one begun after it" if then_own else ""
    return f"{lead}{how_many}begun before the branch point{second}"


def loss_range(values: list[float]) -> str:
    """min–max of training-loss levels (one value alone; – for none)."""
    low, high = (f"{f(values):.3g}" for f in (min, max)) if values else ("–", "–")
    return low if low == high else f"{low}–{high}"


def _pooled_cell(s: dict, n: int) -> str:
    low, high = s["wilson95"]
    p = "" if s["p_vs_null"] is None else f", p {s['p_vs_null']:.3g}"
    paired = "" if s["paired_p"] is None else f" (paired: {s['paired_p']:.3g}, {s['pairs']} pairs)"
    return f"{s['k']}/{n} [{low:.2f}, {high:.2f}]{p}{paired}"


def _runs(n: int) -> str:
    return "one run" if n == 1 else f"{n} runs"


def trajectories(n: int) -> str:
    return "one trajectory" if n == 1 else f"{n} trajectories"


def pooled_section(folders: list[pathlib.Path], note: str = "") -> list[str]:
    """Per change, every branch point's branches together (section 3's table from branches)."""
    summary = pooled_summary(folders)
    if NULL_GROUP not in summary:
        return []
    lines = ["### Per remedy, from full-scale branches", "",
             f"Every null-perturbation branch of section 4 pooled over its branch points (epochs named; "
             f"source: {_runs(summary[NULL_GROUP]['sources'])}): per change, the branches reaching each "
             "endpoint against those that changed only the data order, with the one-sided exact test "
             "stratified by branch point (conditional on each point's margins, so a few branches per point "
             "bound how small p can be) and, since each remedy branch shares its data order with one null "
             "branch, the exact sign test over those pairs (paired). Median steps: Kaplan–Meier median of the "
             "steps from the branch point to the first divergence event (0: an event that began on the steps "
             "just before it). Largest step loss: of a full batch after the branch point (min–max), the "
             "size of what the events did. Training loss reached: the lowest 100-step median of the step loss over "
             "windows after the branch point, up to a branch's first divergence event or its end (min–max); "
             "at the event: the same median just before it.", "",
             "| change | after epoch → trained to | branches | " + " | ".join(
                 f"{title} [95 % Wilson], stratified exact p vs data order only" for _, title in ENDPOINTS)
             + " | median steps to a divergence event | largest step loss | training loss reached"
               " | training loss at the event |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary.values():
        median = "not reached" if s["median_delay"] is None else f"{s['median_delay']:.0f}"
        lines.append(f"| {s['change']} | {', '.join(f'{a} → {b}' for a, b in s['windows'])} | {s['n']} | "
                     + " | ".join(_pooled_cell(s[key], s["n"]) + (inherited(s) if key == "event" else "")
                                  for key, _ in ENDPOINTS)
                     + f" | {median} | {loss_range(s['peaks'])} | {loss_range(s['lowest'])} | "
                       f"{loss_range(s['at_event'])} |")
    return lines + [""] + ([note, ""] if note else [])


def pooled_sentence(folders: list[pathlib.Path]) -> str | None:
    """The pooled branch result for the answer paragraph (None before any null branch finished)."""
    summary = pooled_summary(folders)
    if NULL_GROUP not in summary:
        return None
    null = summary.pop(NULL_GROUP)

    def collapsed(s: dict) -> str:
        low, high = s["collapsed"]["wilson95"]
        return f"{s['collapsed']['k']}/{s['n']} [{low:.2f}, {high:.2f}]"

    def p(c: dict) -> str:
        return f"p {c['p_vs_null']:.2g}, paired {c['paired_p']:.2g}"

    def size(s: dict) -> str:  # how large the events were, beside the null branches'
        return (f", its branches' largest full-batch step loss {loss_range(s['peaks'])} against "
                f"{loss_range(null['peaks'])} for the data-order-only ones"
                if s["event"]["k"] and s["peaks"] and null["peaks"] else "")

    others = [f"{collapsed(s)} with {s['change']} ({p(s['collapsed'])}; a divergence event in "
              f"{s['event']['k']}/{s['n']}, {p(s['event'])}{inherited(s, ', ')}{size(s)}"
              + ("; switched on mid-run, so also a transient LR cut, see the caveats" if "grad_clip" in s["change"]
                 else "") + ")"
              for s in summary.values() if s["collapsed"]["p_vs_null"] is not None]
    ends = sorted({b for _, b in null["windows"]})
    return (f"Branched at full scale from {null['points']} checkpoints (after epochs "
            f"{', '.join(map(str, null['branch_epochs']))}; trained to epoch {' or '.join(map(str, ends))}) of "
            f"{_runs(null['sources'])} (`stable`, `asrun`) "
            "before a divergence, "
            f"the continuations that changed only the data order collapsed in {collapsed(null)}"
            + (f" ({per_point(null)})" if null["points"] > 1 else "")
            + (", against " + "; ".join(others) if others else "")
            + " (one-sided exact tests stratified by branch point, and sign tests over the branches paired by data "
              "order; sections 3 and 4)."
            + "".join(f" The branches with {s['change']} reached a 100-step median training loss of "
                      f"{loss_range(s['lowest'])}, {level_word(s['lowest'], null['at_event'])} the "
                      f"{loss_range(null['at_event'])} at which the data-order-only branches diverged."
                      for s in summary.values() if s["lowest"] and null["at_event"] and not s["at_event"])
            + f" These are branches of {trajectories(null['sources'])}, not seeds.")


def per_point(s: dict) -> str:
    """A group's collapses per branch point, by source run: "run 1 after epoch 17: 3/3, ..."."""
    runs = sorted({i for i, *_ in s["per_point"]})
    return "; ".join((f"run {i} " if len(runs) > 1 else "") + ", ".join(
        f"after epoch {e}: {k}/{n}" for j, e, k, n in sorted(s["per_point"], key=lambda t: t[1]) if j == i)
        for i in runs)


def level_word(reached: list[float], diverged: list[float]) -> str:
    """Where the levels a run reached lie against those at which others diverged."""
    return "below" if max(reached) < min(diverged) else "as low as" if min(reached) <= max(diverged) else "above"
