"""Study report: ``summary.json``, ``summary.md``, plots and a provenance ``README.md`` (one
folder's writer; the per-cell statistics it tabulates are in ``report.statistics``)."""

from __future__ import annotations

import math
import pathlib
from collections import Counter, defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfno.evaluation import below_floor, meets_success  # noqa: E402
from jaxfno.evaluation.outcomes import COLLAPSE_OUTCOMES, OUTCOMES  # noqa: E402
from jaxfno.io import atomic_path, write_json  # noqa: E402
from jaxfno.provenance import code_commit, versions  # noqa: E402
from jaxfno.report.figures import format_value, save_figure  # noqa: E402
from jaxfno.report.statistics import (fisher_less, kaplan_meier, km_median, logrank_p,  # noqa: E402
                                     paired_sign_less, wilson_interval)

PLOTS = ("loss.png", "grad_norm.png", "lr.png", "survival.png", "blocks.png", "reconstructions.png")


def _mean_sd(values) -> dict | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


REFERENCE_ARM = "stable"  # remedies are tested against it, within a condition


def summarise(results: dict) -> dict:
    """Per cell (arm × condition) aggregates over seeds. ``results`` maps RunKey → RunResult.

    Collapse is SPEC §6.3's (outcomes non_finite, collapsed_constant, diverged); the §6.1
    verdict's count stays beside it (``collapsed_6_1``). Each cell but the reference arm's gets
    a one-sided Fisher test, an exact sign test over the seeds both ran (paired by seed) and a
    log-rank test against ``stable`` in the same condition."""
    by_cell = defaultdict(list)
    for key, result in sorted(results.items(), key=lambda kv: (kv[0].condition, kv[0].arm, kv[0].seed)):
        by_cell[key.cell].append((key, result))
    cells = {}
    for cell, runs in by_cell.items():
        n = len(runs)
        outcomes = [r.verdict.get("outcome", "unjudged") for _, r in runs]
        collapsed = sum(o in COLLAPSE_OUTCOMES for o in outcomes)
        ttd = [r.verdict["outcome_details"]["time_to_divergence"] for _, r in runs if "outcome_details" in r.verdict]
        times, observed = [t["step"] for t in ttd], [t["observed"] for t in ttd]
        rules = defaultdict(int)
        for _, r in runs:
            for rule in r.verdict["rules"]:
                rules[rule] += 1
        low, high = wilson_interval(collapsed, n)
        key0 = runs[0][0]
        cells[cell] = {
            "arm": key0.arm, "condition": key0.condition,
            "seeds": [k.seed for k, _ in runs],
            "n": n,
            "epochs": sorted({len(r.history["val_loss"]) for _, r in runs}),
            "outcomes": dict(Counter(outcomes)),
            "outcome_per_seed": dict(zip((k.seed for k, _ in runs), outcomes)),
            "scale_sensitive": sum(bool(r.verdict.get("outcome_details", {}).get("scale_sensitive")) for _, r in runs),
            "collapsed": collapsed,
            "p_collapse": collapsed / n,
            "p_collapse_wilson95": [low, high],
            "divergence_steps": times, "divergence_observed": observed,
            "median_steps_to_divergence": km_median(times, observed) if ttd else None,
            "divergence_epochs": [t["epoch"] for t in ttd if t["observed"]],
            "collapsed_6_1": sum(r.verdict["collapsed"] for _, r in runs),
            "rules": dict(rules),
            "succeeded": sum(meets_success(r.metrics, r.verdict) for _, r in runs),
            "below_floor": sum(below_floor(r.stats["amp_ssim"], r.stats["floor_amp_ssim"]) for _, r in runs),
            "plateau": _mean_sd([r.verdict.get("outcome_details", {}).get("plateau") for _, r in runs]),
            "final_contrast": _mean_sd([r.verdict.get("outcome_details", {}).get("contrast") for _, r in runs]),
            "best_val_loss": _mean_sd([r.stats["best_val_loss"] for _, r in runs]),
            "final_val_loss": _mean_sd([r.stats["final_val_loss"] for _, r in runs]),
            "amp_ssim": _mean_sd([r.stats["amp_ssim"] for _, r in runs]),
            "phase_ssim": _mean_sd([r.stats["phase_ssim"] for _, r in runs]),
            "amp_mae": _mean_sd([r.stats["amp_mae"] for _, r in runs]),
            "phase_mae": _mean_sd([r.stats["phase_mae"] for _, r in runs]),
            "config_hashes": sorted({r.config.config_hash() for _, r in runs}),
        }
    for cell in cells.values():
        ref = cells.get(f"{REFERENCE_ARM}@{cell['condition']}")
        if ref is None or cell["arm"] == REFERENCE_ARM:
            cell["fisher_p_vs_stable"] = cell["logrank_p_vs_stable"] = cell["paired_p_vs_stable"] = None
            cell["pairs_vs_stable"] = 0
            continue
        cell["fisher_p_vs_stable"] = fisher_less(cell["collapsed"], cell["n"], ref["collapsed"], ref["n"])
        # a seed fixes initialisation and data order in both arms: the seeds both ran make pairs
        pairs = [(cell["outcome_per_seed"][s] in COLLAPSE_OUTCOMES, ref["outcome_per_seed"][s] in COLLAPSE_OUTCOMES)
                 for s in cell["seeds"] if s in ref["outcome_per_seed"]]
        cell["paired_p_vs_stable"] = paired_sign_less(pairs) if pairs else None
        cell["pairs_vs_stable"] = len(pairs)
        cell["logrank_p_vs_stable"] = logrank_p(cell["divergence_steps"], cell["divergence_observed"],
                                                ref["divergence_steps"], ref["divergence_observed"])
    return cells


def _fmt(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "–"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def outcome_text(counts: dict) -> str:
    order = list(OUTCOMES) + sorted(set(counts) - set(OUTCOMES))
    return ", ".join(f"{name} {counts[name]}" for name in order if counts.get(name))


def summary_markdown(cells: dict, title: str) -> str:
    lines = [
        f"# {title}", "",
        "| arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | Fisher p vs stable | "
        "median steps to divergence | log-rank p | best val | final val | final contrast | amp SSIM | "
        "§6.1 collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells.values():
        low, high = c["p_collapse_wilson95"]
        median = c["median_steps_to_divergence"]
        lines.append(
            f"| {c['arm']} | {c['condition']} | {c['n']} | {outcome_text(c['outcomes'])} | "
            f"{c['collapsed']}/{c['n']} = {c['p_collapse']:.2f} [{low:.2f}, {high:.2f}] | "
            f"{_p(c['fisher_p_vs_stable'])} | {'not reached' if median is None else f'{median:.0f}'} | "
            f"{_p(c['logrank_p_vs_stable'])} | {_fmt(c['best_val_loss'])} | {_fmt(c['final_val_loss'])} | "
            f"{_fmt(c['final_contrast'], 3)} | {_fmt(c['amp_ssim'], 3)} | {c['collapsed_6_1']}/{c['n']} |"
        )
    lines += ["", "Values are mean ± sample SD over seeds. Outcomes and collapse: SPEC §6.3 (collapse = "
              "non_finite, collapsed_constant or diverged). Fisher: one-sided exact test that the arm "
              "collapses less often than `stable` in the same condition. Steps to divergence: global "
              "0-based step of the first divergence event, Kaplan–Meier median (runs without an event "
              "censored at their last step); log-rank: two-sided, against `stable` in the same condition. "
              "Final contrast: std/mean of the stitched amplitude over the ground truth's. §6.1 "
              "collapsed: the original rules (non_finite, constant_output, learns_then_collapses)."]
    return "\n".join(lines) + "\n"


def _by_cell(results: dict) -> dict:
    grouped = defaultdict(list)
    for key, result in sorted(results.items(), key=lambda kv: (kv[0].condition, kv[0].arm, kv[0].seed)):
        grouped[key.cell].append((key.seed, result))
    return grouped


def survival_figure(cells: dict):
    """Kaplan–Meier curves of the time to the first divergence event, one per cell."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in cells.values():
        if not c["divergence_steps"]:
            continue
        grid, surv = kaplan_meier(c["divergence_steps"], c["divergence_observed"])
        end = max(c["divergence_steps"])
        ax.step(np.append(grid, end), np.append(surv, surv[-1]), where="post",
                label=f"{c['arm']} @ {c['condition']} (n={c['n']})")
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction without a divergence event")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _first_event(r) -> list[int]:
    """The step of a run's first divergence event (SPEC §6.3), if it had one."""
    events = r.verdict.get("outcome_details", {}).get("events", [])
    return [events[0]["step"]] if events else []


def _curves(results: dict, ylabel: str, series, log: bool = True, start: int = 1, marks=None):
    """One line per run and series, a colour per cell; x counts from ``start`` (1: epochs, 0:
    global steps); ``marks(r)``: x positions to mark on the run's first series."""
    grouped = _by_cell(results)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.tab10(np.linspace(0, 1, max(len(grouped), 1)))
    marked = False
    for colour, (arm, runs) in zip(colours, grouped.items()):
        for i, (_, r) in enumerate(runs):
            for label, values, style in series(r):
                ax.plot(np.arange(start, len(values) + start), values, style, color=colour, lw=1, alpha=0.85,
                        label=f"{arm} {label}".strip() if i == 0 else None)
            for x in marks(r) if marks else []:
                values = series(r)[0][1]
                ax.plot(x, values[x - start], "x", color=colour, ms=8, mew=2,
                        label=None if marked else "first divergence event")
                ax.axvline(x, color=colour, ls=":", lw=0.8, alpha=0.5)  # to read the other runs' values there
                marked = True
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def write_plots(results: dict, out: pathlib.Path) -> None:
    loss = _curves(results, "relative L1 amplitude loss", lambda r: [
        ("train", r.history["train_loss"], "--"), ("val", r.history["val_loss"], "-")])
    loss.axes[0].set_xlabel("epoch")
    save_figure(loss, out / "loss.png")

    grad = _curves(results, "global grad norm (pre-clip)", lambda r: [
        ("", r.history["grad_norm"], "-")], start=0)
    grad.axes[0].set_xlabel("step (0-based)")
    save_figure(grad, out / "grad_norm.png")

    # Read back from each step's optimiser state, not the schedule's value; each run's first
    # divergence event marked on its schedule (when in the schedule runs diverge).
    lr = _curves(results, "learning rate applied", lambda r: [("", r.history["lr"], "-")], start=0,
                 marks=_first_event)
    lr.axes[0].set_xlabel("step (0-based)")
    save_figure(lr, out / "lr.png")

    save_figure(survival_figure(summarise(results)), out / "survival.png")
    save_figure(_block_figure(results), out / "blocks.png")
    save_figure(_reconstruction_grid(results), out / "reconstructions.png")


def _block_figure(results: dict):
    stats = ("layerscale_abs_mean", "norm_scale_mean", "update_rms", "output_rms")
    fig, axes = plt.subplots(1, len(stats), figsize=(16, 3.8))
    grouped = _by_cell(results)
    colours = plt.cm.tab10(np.linspace(0, 1, max(len(grouped), 1)))
    for colour, (arm, runs) in zip(colours, grouped.items()):
        _, r = runs[0]  # first seed of each arm keeps the figure readable
        blocks = r.history["diagnostics"]["blocks"]
        for b, values in enumerate(blocks.values()):
            for ax, stat in zip(axes, stats):
                series = values.get(stat)
                if series and all(v is not None for v in series):
                    # deeper blocks are drawn more opaque
                    ax.plot(np.arange(1, len(series) + 1), series, color=colour, lw=1,
                            alpha=0.4 + 0.6 * (b + 1) / len(blocks), label=arm if b == 0 else None)
    for ax, stat in zip(axes, stats):
        ax.set_title(stat + " (per block)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)  # every arch has activation statistics
    return fig


def _reconstruction_grid(results: dict):
    """Ground truth and the first kept reconstruction of each cell (a run committed without its
    ``recon.npz`` is skipped; a cell with none gets an empty panel)."""
    grouped = _by_cell(results)
    kept = {cell: next((r for _, r in runs if (r.run_dir / "recon.npz").exists()), None)
            for cell, runs in grouped.items()}
    fig, axes = plt.subplots(2, len(grouped) + 1, figsize=(2.4 * (len(grouped) + 1), 5))
    axes = np.atleast_2d(axes).reshape(2, -1)
    truth = None
    panels = []
    for cell, r in kept.items():
        if r is None:
            panels.append((f"{cell}\n(no recon.npz kept)", None))
            continue
        with np.load(r.run_dir / "recon.npz") as f:
            truth = f["ground_truth"] if truth is None else truth
            panels.append((f"{cell}\nSSIM {format_value(r.stats['amp_ssim'], 3)}", f["prediction"]))
    panels.insert(0, ("ground truth", truth))
    for col, (label, image) in enumerate(panels):
        if image is not None:
            axes[0, col].imshow(np.abs(image), cmap="gray")
            axes[1, col].imshow(np.angle(image), cmap="twilight")
        axes[0, col].set_title(label, fontsize=7)
        for ax in axes[:, col]:
            ax.axis("off")
    return fig


def write_report(results: dict, out: pathlib.Path, *, title: str, command: str, datasets,
                 scale: str) -> dict:
    """Write ``summary.json``/``.md``, the plots and a provenance README for ``results``
    (RunKey → RunResult) trained on ``datasets``; returns the per-cell summary."""
    out.mkdir(parents=True, exist_ok=True)
    cells = summarise(results)
    devices = sorted({f"{e.get('device', '?')} × {e.get('devices', '?')}"
                      + (f" (host CPU {e['host_cpu']})" if e.get("host_cpu") else " (host CPU not recorded)")
                      for r in results.values() for e in [r.history.get("execution", {})]})
    provenance = {
        "command": command,
        "scale": scale,
        "datasets": [{"path": str(d.path), "config_hash": d.config.config_hash(), "config": d.config.to_dict(),
                      "files": d.provenance.get("files")} for d in datasets],
        "seeds": sorted({k.seed for k in results}),
        "devices": devices,
        "report_commit": code_commit(),
        "versions": versions(),
        "runs": {k.id: {"config": r.config.to_dict(), "config_hash": r.config.config_hash()}
                 for k, r in results.items()},
    }
    write_json(out / "summary.json", {"cells": cells, "provenance": provenance})
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(cells, title))
    write_plots(results, out)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_provenance_markdown(provenance))
    return cells


def _provenance_markdown(p: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    lines = [
        "# Provenance", "",
        f"- command: `{p['command']}`",
        f"- scale: {p['scale']}",
        *(f"- dataset {d['config_hash']} at `{d['path']}`: {d['config']}; files (SHA-256): {d['files']}"
          for d in p["datasets"]),
        f"- seeds: {p['seeds']}",
        f"- devices the runs trained on: {', '.join(p['devices'])}",
        f"- report written by jaxfno at commit {p['report_commit']}",
        f"- versions: {versions}",
        "", "Resolved configs per run: `summary.json` → provenance.runs; each run directory keeps",
        "`config.json`, `history.json`, `metrics.json`, `stats.json`, `verdict.json`, Orbax",
        "checkpoints (`last`, `best`) and the stitched reconstruction.",
        "", "Plots: " + ", ".join(f"[{p}]({p})" for p in PLOTS),
    ]
    return "\n".join(lines) + "\n"
