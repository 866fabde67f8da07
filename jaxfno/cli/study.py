"""Commands on a study: run Stage A, its report and expectations, FINDINGS.md, outcome tables,
re-judging finished runs."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from jaxfno.io import enable_compilation_cache, read_json
from jaxfno.config import ConfigError, DataConfig, RunConfig
from jaxfno.study import stage_a
from jaxfno.study.stage_a import SCALES
from jaxfno.cli.flags import (_absolute_probe_data, _flag_sections, _join_processes, config_from_args,
                              execution_from_args, parse_set)
from jaxfno.cli.datasets import dataset_loader


SCALE_FIELDS = {"model.width": "width", "model.blocks": "blocks", "model.modes": "modes",
                "train.epochs": "epochs", "train.train_subset": "train_subset", "train.stop_after": "stop_after"}


def study_data_and_scale(a):
    """The study's base data config (data flags, then ``--set data.*``) and its scale (``--set``
    on a scale field, e.g. ``model.width=8``, ``train.stop_after=2``); other fields are refused."""
    sections = RunConfig.sections()
    data = _absolute_probe_data(config_from_args(a, DataConfig, "data"))  # flags and --set data.*
    scale_changes = {}
    for item in a.set:
        section, name, value = parse_set(item, {**_flag_sections(a), **sections})
        key = f"{section}.{name}"
        if key in SCALE_FIELDS:
            scale_changes[SCALE_FIELDS[key]] = value
        elif section in sections and section != "data":
            raise ConfigError(f"study stage-a --set {key}: the arms, conditions or seeds set this field; "
                              f"a study changes data.* and the scale's {', '.join(SCALE_FIELDS)} "
                              "(jaxfno train --set changes any field of one run)")
    scale = dataclasses.replace(SCALES[a.scale], **scale_changes)
    for arm in a.arms or stage_a.default_arms(a.conditions, a.scale):  # every run's config is valid
        for condition in a.conditions:
            try:
                stage_a.config(arm, scale, stage_a.STUDY_SEED, data, condition)
            except ConfigError:
                raise
            except (KeyError, ValueError):
                pass  # an unknown arm, or one that sets its own physics: the Study names it
    return data, scale


def cmd_study_stage_a(a) -> int:
    data, scale = study_data_and_scale(a)  # a bad config fails here, before any process joins
    execution = execution_from_args(a)
    _join_processes(a)
    enable_compilation_cache()
    from jaxfno.report.study import summary_markdown, write_report
    from jaxfno.study.runner import Study
    from jaxfno.training import Progress

    seeds = stage_a.seeds_for(a.seeds if a.seeds is not None else stage_a.SCALES[a.scale].seeds)
    out = pathlib.Path(a.out)
    study = Study(a.arms or stage_a.default_arms(a.conditions, a.scale), scale, seeds, out, dataset_loader(),
                  Progress(), conditions=a.conditions, data=data, execution=execution,
                  max_members=a.members_per_program, keep_epochs_from=a.keep_epochs_from)
    results = study.run_all()
    command = "jaxfno " + " ".join(sys.argv[1:])
    title = f"Stage A study ({a.scale} scale{_probe_note(data)}{''.join(', ' + s for s in a.set)})"
    cells = write_report(results, out / "report", title=title, command=command,
                         datasets=_datasets_of(study, results), scale=a.scale)
    print(summary_markdown(cells, title))
    print(f"report: {out / 'report' / 'summary.md'}")
    return 0


def _datasets_of(study, results) -> list:
    return list({study.configs[k].data: study.dataset(k) for k in results}.values())


def _probe_note(data: DataConfig) -> str:
    """", probe P" in a study title when the dataset's probe is not the default."""
    return "" if data.probe == DataConfig().probe else f", probe {data.probe}"


def cmd_study_report(a) -> int:
    from jaxfno.report.study import summary_markdown, write_report
    from jaxfno.study.runner import finished_runs

    out = pathlib.Path(a.out)
    results = finished_runs(out)
    if not results:
        raise FileNotFoundError(f"{out}: no finished runs (<condition>/<arm>/seed<seed>/verdict.json)")
    loader = dataset_loader()
    datasets = list({r.config.data: loader(r.config.data) for r in results.values()}.values())
    title = (f"Stage A study ({a.scale} scale{_probe_note(datasets[0].config)}, "
             f"{len(results)} finished runs)")
    cells = write_report(results, out / "report", title=title, command="jaxfno " + " ".join(sys.argv[1:]),
                         datasets=datasets, scale=a.scale)
    print(summary_markdown(cells, title))
    return 0


def cmd_study_expectations(a) -> int:
    """Rewrite one scale's sections of the study's expectations from finished runs: one section per
    device the runs trained on (``stage_a.expectation_section``), each with the runs that collapsed."""
    from jaxfno.evaluation.outcomes import COLLAPSE_OUTCOMES
    from jaxfno.io import write_json
    from jaxfno.pipeline import BRANCH_FILE, RunResult
    from jaxfno.study import stage_a

    sections: dict[str, dict[str, str]] = {}
    for root in map(pathlib.Path, a.dirs):
        for verdict in sorted(root.rglob("verdict.json")):
            run_dir = verdict.parent
            if (run_dir / BRANCH_FILE).exists():
                continue  # a branch is no run of the study
            result = RunResult.load(run_dir)
            if "outcome" not in result.verdict:
                raise ConfigError(f"{run_dir}: no SPEC §6.3 outcome; run 'jaxfno rejudge {run_dir}' first")
            device = stage_a.run_device(result.history)
            entries = sections.setdefault(stage_a.expectation_section(a.scale, result.history), {})
            if result.verdict["outcome"] not in COLLAPSE_OUTCOMES:
                continue
            d = result.verdict["outcome_details"]
            event = d["events"][0] if d["events"] else None
            evidence = (f"{run_dir}: {d['outcome']} on {device}"
                        + (f", first divergence event at step {event['step']} (epoch {event['epoch'] + 1} of "
                           f"{len(result.history['val_loss'])}), peak loss {event['peak_loss']:.4g}" if event else "")
                        + f"; best val {d['best_val_loss']:.4g}, final {d['final_val_loss']:.4g}, plateau "
                          f"{d['plateau']:.4g}, final contrast {d['contrast']:.3g}. Other hardware may take "
                          "another trajectory")
            for arm, condition in stage_a.identify(result.config, a.scale):
                entries[f"{condition}-{arm}-seed{result.config.train.seed}"] = evidence
    if not sections:
        raise ConfigError(f"no finished run under {', '.join(a.dirs)}")
    path = pathlib.Path(a.file)
    current = read_json(path) if path.exists() else {}
    for section, entries in sections.items():
        current[section] = dict(sorted(entries.items()))
        print(f"{path}: {len(entries)} run id(s) expected to collapse at scale {section}")
    write_json(path, dict(sorted(current.items())))
    return 0


def cmd_findings(a) -> int:
    from jaxfno.report.findings import write_findings

    text = write_findings(pathlib.Path(a.root), pathlib.Path(a.out))
    print(text.split("## 1.")[0], end="")
    print(f"written: {a.out}")
    return 0


def cmd_outcomes(a) -> int:
    from jaxfno.report.runs import finished_run_dirs, runs_markdown

    text = runs_markdown(finished_run_dirs(a.dirs), pathlib.Path(a.relative_to) if a.relative_to else None)
    if a.out:
        from jaxfno.io import atomic_path

        with atomic_path(a.out) as tmp:
            tmp.write_text(text)
    print(text, end="")
    return 0


def cmd_rejudge(a) -> int:
    from jaxfno.pipeline import RunResult, rejudge

    loader = dataset_loader()
    for run_dir in map(pathlib.Path, a.run_dirs):
        cfg = RunResult.load(run_dir).config
        result = rejudge(run_dir, loader(cfg.data))
        d = result.verdict["outcome_details"]
        first = d["events"][0] if d["events"] else None
        event = (f"first divergence at step {first['step']} (epoch {first['epoch'] + 1}), peak loss "
                 f"{first['peak_loss']:.4g}" if first else "no divergence event")
        print(f"{run_dir}: {d['outcome']} (best {d['best_val_loss']:.4g}, final {d['final_val_loss']:.4g}, "
              f"plateau {d['plateau']:.4g}, contrast {d['contrast']:.3g}; {event}; "
              f"§6.1: {', '.join(result.verdict['rules']) or 'no collapse'})")
    return 0
