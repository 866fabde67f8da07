"""Study report: ``summary.json``, ``summary.md``, plots and a provenance ``README.md``."""

from __future__ import annotations

import math
import pathlib
import platform
import sys
from collections import defaultdict
from importlib import metadata

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfno.evaluation import below_floor, meets_success  # noqa: E402
from jaxfno.evaluation.collapse import SUCCESS_AMP_MAE, SUCCESS_AMP_SSIM  # noqa: E402
from jaxfno.io import atomic_path, write_json  # noqa: E402
from jaxfno.report.figures import format_value, save_figure  # noqa: E402

PLOTS = ("loss.png", "grad_norm.png", "lr.png", "blocks.png", "reconstructions.png")


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _mean_sd(values) -> dict | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


def summarise(results: dict) -> dict:
    """Per-arm aggregates over seeds. ``results`` maps RunKey(arm, seed) → RunResult."""
    by_arm = defaultdict(list)
    for key, result in results.items():
        by_arm[key.arm].append((key.seed, result))
    arms = {}
    for arm, runs in by_arm.items():
        n = len(runs)
        collapsed = sum(r.verdict["collapsed"] for _, r in runs)
        rules = defaultdict(int)
        for _, r in runs:
            for rule in r.verdict["rules"]:
                rules[rule] += 1
        low, high = wilson_interval(collapsed, n)
        arms[arm] = {
            "seeds": [s for s, _ in runs],
            "n": n,
            "collapsed": collapsed,
            "p_collapse": collapsed / n,
            "p_collapse_wilson95": [low, high],
            "rules": dict(rules),
            "succeeded": sum(meets_success(r.metrics, r.verdict) for _, r in runs),
            "below_floor": sum(below_floor(r.stats["amp_ssim"], r.stats["floor_amp_ssim"]) for _, r in runs),
            "best_val_loss": _mean_sd([r.stats["best_val_loss"] for _, r in runs]),
            "final_val_loss": _mean_sd([r.stats["final_val_loss"] for _, r in runs]),
            "amp_ssim": _mean_sd([r.stats["amp_ssim"] for _, r in runs]),
            "phase_ssim": _mean_sd([r.stats["phase_ssim"] for _, r in runs]),
            "amp_mae": _mean_sd([r.stats["amp_mae"] for _, r in runs]),
            "phase_mae": _mean_sd([r.stats["phase_mae"] for _, r in runs]),
            "config_hashes": sorted({r.config.config_hash() for _, r in runs}),
        }
    return arms


def _fmt(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "–"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def summary_markdown(arms: dict, title: str) -> str:
    lines = [
        f"# {title}", "",
        "| arm | seeds | best val | final val | amp SSIM | phase SSIM | amp MAE | collapsed | "
        "P(collapse) [95 % Wilson] | rules fired | below floor | success |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        low, high = a["p_collapse_wilson95"]
        rules = ", ".join(f"{r} ×{c}" for r, c in a["rules"].items()) or "–"
        lines.append(
            f"| {name} | {a['n']} | {_fmt(a['best_val_loss'])} | {_fmt(a['final_val_loss'])} | "
            f"{_fmt(a['amp_ssim'], 3)} | {_fmt(a['phase_ssim'], 3)} | {_fmt(a['amp_mae'], 3)} | "
            f"{a['collapsed']}/{a['n']} | {a['p_collapse']:.2f} [{low:.2f}, {high:.2f}] | {rules} | "
            f"{a['below_floor']}/{a['n']} | {a['succeeded']}/{a['n']} |"
        )
    lines += ["", "Values are mean ± sample SD over seeds. Collapse rules: SPEC §6 "
              "(non_finite, constant_output, learns_then_collapses). Below floor: amp SSIM more than "
              "0.02 below a constant prediction's (not a SPEC rule). Success: SPEC §6's criterion "
              f"(amp SSIM ≥ {SUCCESS_AMP_SSIM}, amp MAE ≤ {SUCCESS_AMP_MAE}, no collapse verdict), "
              "meant for full-scale runs."]
    return "\n".join(lines) + "\n"


def _by_arm(results: dict) -> dict:
    grouped = defaultdict(list)
    for key, result in sorted(results.items(), key=lambda kv: (kv[0].arm, kv[0].seed)):
        grouped[key.arm].append((key.seed, result))
    return grouped


def _curves(results: dict, ylabel: str, series, log: bool = True):
    grouped = _by_arm(results)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.tab10(np.linspace(0, 1, max(len(grouped), 1)))
    for colour, (arm, runs) in zip(colours, grouped.items()):
        for i, (_, r) in enumerate(runs):
            for label, values, style in series(r):
                ax.plot(np.arange(1, len(values) + 1), values, style, color=colour, lw=1, alpha=0.85,
                        label=f"{arm} {label}".strip() if i == 0 else None)
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
        ("", r.history["grad_norm"], "-")])
    grad.axes[0].set_xlabel("step")
    save_figure(grad, out / "grad_norm.png")

    # Read back from each step's optimiser state, not the schedule's value.
    lr = _curves(results, "learning rate applied", lambda r: [("", r.history["lr"], "-")])
    lr.axes[0].set_xlabel("step")
    save_figure(lr, out / "lr.png")

    save_figure(_block_figure(results), out / "blocks.png")
    save_figure(_reconstruction_grid(results), out / "reconstructions.png")


def _block_figure(results: dict):
    stats = ("layerscale_abs_mean", "norm_scale_mean", "update_rms", "output_rms")
    fig, axes = plt.subplots(1, len(stats), figsize=(16, 3.8))
    grouped = _by_arm(results)
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
    grouped = _by_arm(results)
    fig, axes = plt.subplots(2, len(grouped) + 1, figsize=(2.4 * (len(grouped) + 1), 5))
    axes = np.atleast_2d(axes).reshape(2, -1)
    first = next(iter(grouped.values()))[0][1]
    with np.load(first.run_dir / "recon.npz") as f:
        truth = f["ground_truth"]
    panels = [("ground truth", truth)]
    for arm, runs in grouped.items():
        _, r = runs[0]
        with np.load(r.run_dir / "recon.npz") as f:
            panels.append((f"{arm}\nSSIM {format_value(r.stats['amp_ssim'], 3)}", f["prediction"]))
    for col, (label, image) in enumerate(panels):
        axes[0, col].imshow(np.abs(image), cmap="gray")
        axes[1, col].imshow(np.angle(image), cmap="twilight")
        axes[0, col].set_title(label, fontsize=7)
        for ax in axes[:, col]:
            ax.axis("off")
    return fig


def _versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "scikit-image")
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_report(results: dict, out: pathlib.Path, *, title: str, command: str, dataset,
                 scale: str) -> dict:
    import jax

    out.mkdir(parents=True, exist_ok=True)
    arms = summarise(results)
    device = jax.devices()[0]
    provenance = {
        "command": command,
        "scale": scale,
        "dataset": {"path": str(dataset.path), "config_hash": dataset.config.config_hash(),
                    "config": dataset.config.to_dict(), "files": dataset.provenance.get("files")},
        "seeds": sorted({k.seed for k in results}),
        "device": f"{device.platform}: {getattr(device, 'device_kind', '')}",
        "versions": _versions(),
        "runs": {k.id: {"config": r.config.to_dict(), "config_hash": r.config.config_hash()}
                 for k, r in results.items()},
    }
    write_json(out / "summary.json", {"arms": arms, "provenance": provenance})
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(arms, title))
    write_plots(results, out)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_provenance_markdown(provenance))
    return arms


def _provenance_markdown(p: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    lines = [
        "# Provenance", "",
        f"- command: `{p['command']}`",
        f"- scale: {p['scale']}",
        f"- dataset: config hash {p['dataset']['config_hash']} at `{p['dataset']['path']}`: "
        f"{p['dataset'].get('config')}",
        f"- dataset files (SHA-256): {p['dataset']['files']}",
        f"- seeds: {p['seeds']}",
        f"- device: {p['device']}",
        f"- versions: {versions}",
        "", "Resolved configs per run: `summary.json` → provenance.runs; each run directory keeps",
        "`config.json`, `history.json`, `metrics.json`, `stats.json`, `verdict.json`, Orbax",
        "checkpoints (`last`, `best`) and the stitched reconstruction.",
        "", "Plots: " + ", ".join(f"[{p}]({p})" for p in PLOTS),
    ]
    return "\n".join(lines) + "\n"
