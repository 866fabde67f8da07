"""One run end to end: dataset → training → evaluation → verdict → artifacts on disk.

A run directory holds ``config.json``, ``history.json``, ``metrics.json``, ``stats.json``,
``verdict.json``, ``checkpoints/{last,best[,epochs]}``, ``recon.npz`` and ``recon.png`` (and
``branch.json`` for a run continued from another's checkpoint, :func:`branch_run`). It is bound to
its config: a directory holding a run of another config is never written into (``overwrite``
wipes it instead); a finished run of the same config is reused, an unfinished one resumed.
One concern (the run directory's life: prepare, lock, train, judge, write, branch, re-judge),
kept in one module past ~300 lines so that every write to a run directory is in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import time
import warnings
from typing import Callable, Sequence

import jax
import numpy as np

from jaxfno.config import ConfigError, RunConfig
from jaxfno.data import Dataset
from jaxfno.evaluation import below_floor, collapse_verdict, constant_floor, meets_success, score
from jaxfno.evaluation.outcomes import amplitude_contrast, amplitude_cv, constant_plateau, judge
from jaxfno.execution import ExecutionConfig
from jaxfno.io import directory_lock, read_json, remove_stale_temporaries, write_json, write_npz
from jaxfno.processes import primary_first
from jaxfno.report.figures import format_value, reconstruction_figure, save_figure
from jaxfno.training import checkpoint
from jaxfno.training import Member, Progress, train_members

ARTIFACTS = ("config.json", "history.json", "metrics.json", "stats.json", "verdict.json")
NORM_SCALE_NEAR_ZERO = 1e-2  # |mean InstanceNorm scale| below this: the block's output is muted


class RunDirError(RuntimeError):
    """A run directory cannot be used for this config."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_dir: pathlib.Path
    config: RunConfig
    history: dict
    metrics: dict
    stats: dict
    verdict: dict

    @classmethod
    def load(cls, run_dir: pathlib.Path) -> "RunResult":
        run_dir = pathlib.Path(run_dir)
        missing = [name for name in ARTIFACTS if not (run_dir / name).exists()]
        if missing:
            raise RunDirError(f"{run_dir}: not a finished run (missing {', '.join(missing)})")
        return cls(
            run_dir,
            RunConfig.from_dict(read_json(run_dir / "config.json")),
            read_json(run_dir / "history.json"),
            read_json(run_dir / "metrics.json"),
            read_json(run_dir / "stats.json"),
            read_json(run_dir / "verdict.json"),
        )


def prepare_run_dir(run_dir: pathlib.Path, cfg: RunConfig, overwrite: bool = False) -> str:
    """Bind ``run_dir`` to ``cfg``. Returns "finished" (reusable), "started" or "new". A
    ``config.json`` that cannot be read is an error naming it (``overwrite`` starts afresh); a
    finished run whose artifacts cannot be read is evaluated again from its last checkpoint
    (with a warning), which rewrites them."""
    config_file = run_dir / "config.json"
    if config_file.exists():
        try:
            existing = RunConfig.from_dict(read_json(config_file))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # ConfigError is a ValueError
            if not overwrite:
                raise RunDirError(f"{config_file} is not a run config ({exc}); restore it, choose "
                                  "another directory or pass --overwrite") from None
            shutil.rmtree(run_dir)
            write_json(config_file, cfg.to_dict())
            return "new"
        if existing.config_hash() != cfg.config_hash():
            if not overwrite:
                raise RunDirError(
                    f"{run_dir} holds a run of another config ({existing.config_hash()} != "
                    f"{cfg.config_hash()}); choose another directory or pass --overwrite"
                )
            shutil.rmtree(run_dir)
        elif all((run_dir / name).exists() for name in ARTIFACTS):
            unreadable = _unreadable_artifacts(run_dir)
            if not unreadable:
                return "finished"
            if checkpoint.latest_epoch(run_dir) is None:
                raise RunDirError(f"{run_dir}: {unreadable[0]}, and there is no checkpoint to evaluate "
                                  "the run again from; pass --overwrite to train it again")
            warnings.warn(f"{run_dir}: {unreadable[0]}; evaluating the run again from its last checkpoint")
            (run_dir / "verdict.json").unlink()  # the run is unfinished until its artifacts are rewritten
            return "started"
        else:
            return "started"
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(f"{run_dir} is not empty and holds no jaxfno run; pass --overwrite")
        shutil.rmtree(run_dir)
    write_json(config_file, cfg.to_dict())
    return "new"


def run_members(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[pathlib.Path],
    dataset: Dataset,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_epoch_end: Callable | None = None,
    execution: ExecutionConfig = ExecutionConfig(),
    keep_epochs_from: int = 0,
) -> list[RunResult]:
    """Train, evaluate and write K runs that share one compiled program. Each run directory is
    locked against other processes while this one writes it (:func:`jaxfno.io.directory_lock`;
    in a multi-process job by process 0, for all of them). ``keep_epochs_from``: see
    :func:`jaxfno.training.loop.train_members`."""
    run_dirs = [pathlib.Path(d) for d in run_dirs]
    with contextlib.ExitStack() as locks:
        if jax.process_index() == 0:
            for d in run_dirs:
                stale = locks.enter_context(directory_lock(d))
                if stale:
                    warnings.warn(f"{d}: took over the lock of a process that is gone ({stale})")
                remove_stale_temporaries(d)
        return _run_members(configs, run_dirs, dataset, overwrite=overwrite, progress=progress,
                            on_epoch_end=on_epoch_end, execution=execution, keep_epochs_from=keep_epochs_from)


def _unreadable_artifacts(run_dir: pathlib.Path) -> list[str]:
    """What is wrong with a finished run's JSON artifacts, one line each (empty: nothing)."""
    problems = []
    for name in ARTIFACTS:
        try:
            value = read_json(run_dir / name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not isinstance(value, dict):
            problems.append(f"{run_dir / name} holds a {type(value).__name__}, not a JSON object")
    return problems


def align_checkpoints(run_dirs: Sequence[pathlib.Path]) -> None:
    """Members of one program resume from one epoch. A process killed between the members' saves
    leaves some a ``last`` checkpoint one epoch ahead of the others; their newer steps are dropped
    (with a warning), so that every member resumes from the epoch all of them reached (the kept
    spare, :data:`checkpoint.KEEP`), and the dropped epoch is trained again, to the same result."""
    if len(run_dirs) < 2:
        return
    latest = [checkpoint.latest_epoch(d) for d in run_dirs]
    if any(e is None for e in latest) or len(set(latest)) == 1:
        return  # none to resume (every member starts afresh), or all at one epoch
    common = min(latest)
    if not all(common in checkpoint.good_epochs(d) for d, e in zip(run_dirs, latest) if e > common):
        return  # nothing to align to: the training loop reports the mismatch
    for d, e in zip(run_dirs, latest):
        if e > common:
            warnings.warn(f"{d}: its checkpoint of epoch {e + 1} is dropped: the other runs of its "
                          f"program stopped after epoch {common + 1}, which all of them resume from")
            checkpoint.discard_after(d, "last", common)


def _run_members(configs, run_dirs, dataset, *, overwrite, progress, on_epoch_end, execution, keep_epochs_from):
    status = primary_first(lambda: [prepare_run_dir(d, c, overwrite) for c, d in zip(configs, run_dirs)])
    todo = [k for k, s in enumerate(status) if s != "finished"]
    if keep_epochs_from and len(todo) < len(run_dirs):
        done = len(run_dirs) - len(todo)
        warnings.warn(f"keep_epochs_from={keep_epochs_from}: {done} of the program's {len(run_dirs)} runs "
                      f"{'is' if done == 1 else 'are'} finished and reused as {'it is' if done == 1 else 'they are'}, "
                      f"so no epoch of {'its' if done == 1 else 'theirs'} is kept")
    if todo:
        primary_first(lambda: align_checkpoints([run_dirs[k] for k in todo]))
        program = train_members(
            [configs[k] for k in todo], [run_dirs[k] for k in todo], dataset,
            progress=progress, on_epoch_end=on_epoch_end, execution=execution,
            keep_epochs_from=keep_epochs_from,
        )
        start = time.perf_counter()
        stitched = program.predict()
        floor = constant_floor(dataset.test.ground_truth)
        for member in program.members:
            member.history["timing"]["final_prediction_seconds"] = time.perf_counter() - start
        plateau = data_plateau(dataset, configs[todo[0]])  # members share physics and batch size
        for k, member in enumerate(program.members):
            _write_artifacts(member, stitched[k], dataset, floor, plateau)
    return [RunResult.load(d) for d in run_dirs]


def data_plateau(dataset: Dataset, cfg: RunConfig) -> float:
    """SPEC §6.3's plateau of ``cfg``'s runs: the best constant object's validation loss."""
    return constant_plateau(dataset.test.diffraction, dataset.probe_simulated, cfg.physics,
                            cfg.train.batch_size)["plateau"]


def run_verdict(history: dict, stitched: np.ndarray, ground_truth, floor: dict, metrics: dict,
                plateau: float) -> dict:
    """The §6.1 verdict with the §6.3 outcome beside it (``outcome``, ``outcome_details``)."""
    verdict = collapse_verdict(history, stitched, ground_truth, floor, metrics)
    details = judge(history, plateau, amplitude_contrast(stitched, ground_truth))
    return {**verdict, "outcome": details["outcome"], "outcome_details": details}


def _write_artifacts(member: Member, stitched: np.ndarray, dataset: Dataset, floor: dict,
                     plateau: float) -> None:
    ground_truth = dataset.test.ground_truth
    history = member.history
    metrics = score(stitched, ground_truth)
    verdict = run_verdict(history, stitched, ground_truth, floor, metrics, plateau)
    d = member.run_dir
    write_npz(d / "recon.npz", prediction=stitched, ground_truth=ground_truth)
    title = f"{d.parent.name}/{d.name}: amp SSIM {format_value(metrics['ssim'][0], 3)}"
    title += f" ({verdict['outcome']})"
    save_figure(reconstruction_figure(stitched, ground_truth, title), d / "recon.png")
    write_json(d / "history.json", history)
    write_json(d / "metrics.json", metrics)
    write_json(d / "stats.json", run_stats(member.config, history, metrics, floor, verdict))
    write_json(d / "verdict.json", verdict)  # written last: its presence marks a finished run


def run_stats(cfg: RunConfig, history: dict, metrics: dict, floor: dict, verdict: dict) -> dict:
    """The per-run summary of SPEC §7, with SPEC §6's success criterion."""
    val = np.asarray(history["val_loss"], float)
    grad = np.asarray(history["grad_norm"], float)
    grad = grad[np.isfinite(grad)]
    blocks = {}
    for name, stats in history["diagnostics"]["blocks"].items():
        final = {key: values[-1] for key, values in stats.items() if values}
        scale = final.get("norm_scale_mean")
        blocks[name] = {**final, "norm_scale_near_zero": scale is not None and abs(scale) < NORM_SCALE_NEAR_ZERO}
    return {
        "config_hash": cfg.config_hash(),
        "arch": cfg.model.arch,
        "seed": cfg.train.seed,
        "epochs": len(val),
        "best_val_loss": float(val.min()) if val.size else None,
        "best_epoch": int(val.argmin()) if val.size else None,
        "final_val_loss": float(val[-1]) if val.size else None,
        "final_train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "nan": history["nonfinite_step"] is not None,
        "outcome": verdict["outcome"],
        "plateau": verdict["outcome_details"]["plateau"],
        "final_contrast": verdict["outcome_details"]["contrast"],
        "time_to_divergence": verdict["outcome_details"]["time_to_divergence"],
        "grad_norm": {
            "mean": float(grad.mean()), "min": float(grad.min()), "max": float(grad.max())
        } if grad.size else None,
        "amp_mae": metrics["mae"][0], "phase_mae": metrics["mae"][1],
        "amp_ssim": metrics["ssim"][0], "phase_ssim": metrics["ssim"][1],
        "amp_psnr255": metrics["psnr255"][0], "phase_psnr255": metrics["psnr255"][1],
        "floor_amp_ssim": floor["ssim"][0],
        "amp_ssim_below_floor": below_floor(metrics["ssim"][0], floor["ssim"][0]),
        "meets_success": meets_success(metrics, verdict),
        "blocks": blocks,
        "any_norm_scale_near_zero": any(b["norm_scale_near_zero"] for b in blocks.values()),
    }


def run_one(cfg: RunConfig, run_dir: pathlib.Path, dataset: Dataset, **kwargs) -> RunResult:
    return run_members([cfg], [run_dir], dataset, **kwargs)[0]


BRANCH_FILE = "branch.json"


def branch_run(source_dir: pathlib.Path, kind: str, cfg: RunConfig, run_dir: pathlib.Path,
               dataset: Dataset, *, overwrite: bool = False, step: int | None = None, **kwargs) -> RunResult:
    """Continue the run in ``source_dir`` from its ``kind`` checkpoint (``last``, ``best`` or
    ``epochs``; the newest good step, or ``step``) as a new run of ``cfg`` in ``run_dir``: its weights, optimiser state (Adam moments and step
    count), schedule state and history up to that epoch, then epochs ``epoch + 1 ..`` under
    ``cfg``. The epochs' batch orders are drawn from (seed, epoch) as in any run, so a branch
    with an unchanged config replays the source exactly; a changed one isolates what the
    change does from that point on (e.g. ``train.drop_last``).

    ``cfg`` may change anything that leaves the trained state meaningful: physics, batch
    handling, seed, epochs, learning rate and schedule, clip threshold. The model, the dataset,
    the optimiser and the clip algorithm must stay the source's. The source is only read.
    ``run_dir`` records the branch point in ``branch.json`` and in ``history.json``
    (``history["branch"]``); it holds ``checkpoints/best`` from the branch point only when that
    is the source's best (``kind="best"``), else from the first epoch that beats the best
    val_loss before the branch point. A finished branch of the same point is reused, an
    interrupted one resumed."""
    source_dir = pathlib.Path(source_dir).absolute()
    if pathlib.Path(run_dir).absolute() == source_dir:
        raise RunDirError(f"{run_dir}: a branch is written to a directory of its own, not its source's")
    state, meta = checkpoint.restore(source_dir, kind, step=step)
    source = RunConfig.from_dict(meta["config"])
    epoch = int(meta["epoch"])
    for name, same in (("model", cfg.model == source.model), ("dataset", cfg.data == source.data),
                       ("optimizer", cfg.optim.optimizer == source.optim.optimizer),
                       ("clip algorithm", cfg.optim.grad_clip_algorithm == source.optim.grad_clip_algorithm)):
        if not same:
            raise ConfigError(f"a branch keeps the source's {name}; {source_dir} has another")
    if meta["history"]["nonfinite_step"] is not None:
        raise ConfigError(f"{source_dir}'s {kind} checkpoint comes after its non-finite step "
                          f"{meta['history']['nonfinite_step']}: a branch from it would not train "
                          "(branch from an earlier checkpoint: best, or a kept epoch's)")
    if cfg.train.trained_epochs <= epoch + 1:
        raise ConfigError(f"train.epochs={cfg.train.epochs} (stop_after {cfg.train.stop_after}): the "
                          f"branch point is epoch {epoch + 1} of {source_dir}, so nothing would be "
                          "trained (raise train.epochs or train.stop_after)")
    record = {"source": str(source_dir), "source_config_hash": meta["config_hash"], "kind": kind,
              "epoch": epoch}
    status = prepare_run_dir(run_dir, cfg, overwrite)
    if status != "new" and (not (run_dir / BRANCH_FILE).exists() or read_json(run_dir / BRANCH_FILE) != record):
        raise RunDirError(f"{run_dir} holds a run of this config that is not this branch; "
                          "choose another directory or pass --overwrite")
    write_json(run_dir / BRANCH_FILE, record)
    if checkpoint.latest_epoch(run_dir) is None:
        history = dict(meta["history"], branch=record)
        history.pop("keep_epochs_from", None)  # the source's setting, not the branch's
        branch_meta = dict(meta, config=cfg.to_dict(), config_hash=cfg.config_hash(), history=history)
        for target in ("last", "best") if kind == "best" else ("last",):
            checkpoint.save(run_dir, target, epoch, state, branch_meta)
    return run_one(cfg, run_dir, dataset, **kwargs)


def rejudge(run_dir: pathlib.Path, dataset: Dataset) -> RunResult:
    """Judge a finished run again from its files, with this code's outcome (SPEC §6.3): the
    outcome is added to ``verdict.json`` beside the §6.1 verdict as it was recorded, and to
    ``stats.json``. The final contrast comes from ``recon.npz`` where the run kept it, else from
    the verdict's measured stitched-amplitude std/mean (the untrimmed 330², against the ground
    truth's untrimmed ratio; ``contrast_source`` says which)."""
    result = RunResult.load(run_dir)
    if result.config.data != dataset.config:
        raise ConfigError(f"{run_dir} trained on another dataset than {dataset.path}")
    truth = dataset.test.ground_truth
    recon = pathlib.Path(run_dir) / "recon.npz"
    if recon.exists():
        with np.load(recon) as f:
            contrast, source = amplitude_contrast(f["prediction"], truth), "recon.npz"
    else:
        m = result.verdict["measured"]
        ratio = m["amp_std"] / m["amp_mean"] if m["amp_mean"] else 0.0
        contrast = ratio / amplitude_cv(truth, trim=0) if np.isfinite(ratio) else None
        source = "verdict.json measured amp_std/amp_mean (untrimmed 330²)"
    details = dict(judge(result.history, data_plateau(dataset, result.config), contrast),
                   contrast_source=source)
    verdict = {**result.verdict, "outcome": details["outcome"], "outcome_details": details}
    stats = {**result.stats, "outcome": details["outcome"], "plateau": details["plateau"],
             "final_contrast": contrast, "time_to_divergence": details["time_to_divergence"]}
    write_json(pathlib.Path(run_dir) / "stats.json", stats)
    write_json(pathlib.Path(run_dir) / "verdict.json", verdict)
    return RunResult.load(run_dir)
