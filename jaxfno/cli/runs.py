"""Commands on one run and the tools around it: data, model, train, branch, compare, stats,
inspect, bench."""

from __future__ import annotations

import json
import pathlib

from jaxfno.io import enable_compilation_cache, read_json
from jaxfno.config import ConfigError, DataConfig, RunConfig
from jaxfno.cli.flags import (CHECKPOINT_KINDS, _data_config, _flag_sections, _join_processes, _model_config,
                              execution_from_args, parse_set, run_config_from_args)
from jaxfno.cli.datasets import dataset_loader, load_or_build_dataset


def cmd_data_build(a) -> int:
    from jaxfno.data import build_dataset

    path = build_dataset(_data_config(a), pathlib.Path(a.out))
    print(f"dataset ready: {path}")
    return 0


def cmd_data_show(a) -> int:
    from jaxfno.data import describe_dataset

    text, verified = describe_dataset(pathlib.Path(a.dir))
    print(text)
    return 0 if verified else 1


def cmd_model_summary(a) -> int:
    from jaxfno.models import parameter_counts, summary_table

    cfg = _model_config(a)
    counts, rows = parameter_counts(cfg), summary_table(cfg)
    if a.json:
        print(json.dumps({"config": cfg.to_dict(), "counts": counts, "layers": rows}, indent=2))
        return 0
    for path, shape, count in rows:
        print(f"{path:<60} {str(shape):<22} {count:>12,}")
    for name, value in counts.items():
        print(f"{name:<20} {value:>14,}")
    return 0


def cmd_train(a) -> int:
    cfg = run_config_from_args(a)  # validated before anything is compiled
    execution = execution_from_args(a)
    _join_processes(a)
    enable_compilation_cache()
    from jaxfno.pipeline import run_one

    dataset = load_or_build_dataset(cfg.data, a.dataset)
    result = run_one(cfg, pathlib.Path(a.out), dataset, overwrite=a.overwrite, execution=execution,
                     keep_epochs_from=a.keep_epochs_from)
    print(format_stats(result.stats, result.verdict))
    return 0


def format_stats(stats: dict, verdict: dict) -> str:
    lines = [f"{key}: {value}" for key, value in stats.items() if key != "blocks"]
    for name, block in stats.get("blocks", {}).items():
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in block.items())
        lines.append(f"block {name}: {values}")
    if "outcome" in verdict:
        d = verdict["outcome_details"]
        lines.append(f"outcome (SPEC §6.3): {verdict['outcome']} (plateau {d['plateau']:.4g}, final contrast "
                     f"{d['contrast']:.3g}, {len(d['events'])} divergence event(s), scale-sensitive "
                     f"{d['scale_sensitive']})")
    state = "COLLAPSED (" + ", ".join(verdict["rules"]) + ")" if verdict["collapsed"] else "no collapse"
    lines.append(f"verdict (SPEC §6.1): {state}")
    for rule, detail in verdict.get("details", {}).items():
        lines.append(f"  {rule}: {detail}")
    return "\n".join(lines)


def cmd_branch(a) -> int:
    from jaxfno.inspect import resolve
    from jaxfno.pipeline import branch_run

    source_dir, named, step = resolve(pathlib.Path(a.source))
    if a.kind and named and a.kind != named:
        raise ConfigError(f"{a.source} is a {named} checkpoint; --from {a.kind} names another kind")
    if a.after_epoch is not None and step is not None and step != a.after_epoch - 1:
        raise ConfigError(f"{a.source} is the state after epoch {step + 1}, not after epoch {a.after_epoch}")
    kind = a.kind or named or ("epochs" if a.after_epoch is not None else "last")
    if a.after_epoch is not None:
        step = a.after_epoch - 1
        _check_kept(source_dir, kind, step)
    # The run's config.json is its checkpoints' config (a run directory is bound to it).
    run_sets = [item for item in a.set if not item.startswith("execution.")]
    cfg = RunConfig.from_dict(read_json(source_dir / "config.json")).with_overrides(run_sets)
    execution = execution_from_args(a)
    enable_compilation_cache()
    dataset = load_or_build_dataset(cfg.data, a.dataset)
    result = branch_run(source_dir, kind, cfg, pathlib.Path(a.out), dataset, overwrite=a.overwrite,
                        execution=execution, step=step, keep_epochs_from=a.keep_epochs_from)
    print(f"branch of {source_dir} after epoch {result.history['branch']['epoch'] + 1} ({kind}), "
          f"changed: {', '.join(a.set) or 'nothing (a replay)'}")
    print(format_stats(result.stats, result.verdict))
    return 0


def _check_kept(run_dir: pathlib.Path, kind: str, step: int) -> None:
    """That ``kind`` holds ``step``; else restore's error with a hint at the kinds that do."""
    from jaxfno.training import checkpoint

    try:
        checkpoint.require_step(run_dir, kind, step)
    except FileNotFoundError as exc:
        holders = [k for k in CHECKPOINT_KINDS if step in checkpoint.steps(run_dir, k)]
        hint = (f"; {', '.join(f'checkpoints/{k}' for k in holders)} {'holds' if len(holders) == 1 else 'hold'} "
                f"it: pass {run_dir / 'checkpoints' / holders[0]}" if holders else
                " (train with --keep-epochs-from to keep every epoch's state)")
        raise FileNotFoundError(f"{exc}{hint}") from None


def cmd_compare(a) -> int:
    from jaxfno.report.compare import compare_figure, compare_table, load_histories
    from jaxfno.report.figures import save_figure

    run_dirs = [pathlib.Path(d) for d in a.runs]
    histories = load_histories(run_dirs, a.labels or [d.name for d in run_dirs])
    figure = compare_figure(histories, a.from_epoch, a.groups) if a.out else None  # refuses bad groups first
    print(compare_table(run_dirs, histories, a.from_epoch), end="")
    if figure is not None:
        save_figure(figure, pathlib.Path(a.out))
        print(f"figure: {a.out}")
    return 0


def cmd_stats(a) -> int:
    from jaxfno.pipeline import RunResult

    result = RunResult.load(pathlib.Path(a.run_dir))
    print(format_stats(result.stats, result.verdict))
    return 0


# --- study and inspection -----------------------------------------------------------------


# What ``study stage-a --set`` may change besides the dataset (data.*): the scale's fields. The
# arms, conditions and seeds set every other field of a run, and the study exists to vary them.


def cmd_bench(a) -> int:
    for item in a.set:  # each section's items are read by config_from_args; none may be unknown
        parse_set(item, _flag_sections(a))
    enable_compilation_cache()
    from jaxfno import bench
    from jaxfno.io import write_json

    model, execution = _model_config(a), execution_from_args(a)
    if a.what == "study":
        result = bench.bench_study(a.scale, a.members, a.epochs, dataset_loader(), with_torch=not a.no_torch,
                                   execution=execution)
        print(json.dumps(result, indent=2))
        if a.json_out:
            write_json(a.json_out, result)
        return 0
    if a.what == "model":
        result = bench.bench_model(model, a.batch, a.repeats, execution=execution)
    elif a.what == "layers":
        result = bench.bench_layers(model, a.batch, a.repeats, execution=execution)
    else:
        dataset = load_or_build_dataset(DataConfig(), None)
        if a.what == "step":
            result = bench.bench_step(dataset, batch=a.batch, repeats=a.repeats,
                                      with_torch=not a.no_torch, model=model, execution=execution)
        elif a.what == "seeds":
            result = bench.bench_seeds(dataset, model, a.members, a.batch, a.repeats, execution=execution)
        elif a.what == "profile":
            result = bench.bench_profile(dataset, model, pathlib.Path(a.trace_dir), a.members, a.batch,
                                         a.repeats, execution=execution)
        elif a.what == "loop":
            result = bench.bench_loop_overhead(dataset, model, batch=a.batch, repeats=a.repeats,
                                               execution=execution)
        elif a.what == "compile":
            result = bench.bench_compile_cache(dataset, model, a.batch)
        else:
            result = bench.bench_data_and_eval(dataset, model, a.repeats, execution=execution)
    formats = {"layers": bench.format_layers, "profile": bench.format_profile}
    print(formats.get(a.what, bench.format_table)(result))
    if a.json_out:
        write_json(a.json_out, result)
    return 0


def cmd_inspect(a) -> int:
    from jaxfno.inspect import describe_checkpoint, evaluate_checkpoint

    path = pathlib.Path(a.checkpoint)
    print(describe_checkpoint(path))
    if a.evaluate:
        enable_compilation_cache()
        print(json.dumps(evaluate_checkpoint(path), indent=2))
    return 0
