"""Command line, checkpoint inspection and study reporting."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxfno import cli
from jaxfno.cli.flags import CHECKPOINT_KINDS
from jaxfno.config import RunConfig
from jaxfno.inspect import describe_checkpoint, evaluate_checkpoint
from jaxfno.report.study import wilson_interval
from jaxfno.study import stage_a
from jaxfno.study.runner import Study
from jaxfno.training import checkpoint

TINY_TRAIN = ["--width", "4", "--blocks", "2", "--modes", "4", "--epochs", "2",
              "--train-subset", "40", "--arch", "stable_hybrid"]


@pytest.fixture(scope="module")
def cli_run(grid_lines_dataset_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = cli.main(["train", "--out", str(out), "--dataset", str(grid_lines_dataset_path), *TINY_TRAIN])
    assert code == 0
    return out


def test_train_writes_a_complete_run(cli_run, capsys):
    for name in ("config.json", "history.json", "metrics.json", "stats.json", "verdict.json",
                 "recon.png"):
        assert (cli_run / name).exists(), name
    assert cli.main(["stats", str(cli_run)]) == 0
    printed = capsys.readouterr().out
    assert "verdict (SPEC §6.1):" in printed and "outcome (SPEC §6.3):" in printed


def test_rejudge_and_outcomes_table(cli_run, grid_lines_dataset_path, tmp_path, capsys):
    verdict = json.loads((cli_run / "verdict.json").read_text())
    stripped = {k: v for k, v in verdict.items() if not k.startswith("outcome")}
    run = tmp_path / "old_run"
    shutil.copytree(cli_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "verdict.json").write_text(json.dumps(stripped))  # as a run judged before SPEC §6.3
    (run / "recon.npz").unlink()  # and one that kept no reconstruction
    assert cli.main(["rejudge", str(run)]) == 0
    rejudged = json.loads((run / "verdict.json").read_text())
    assert rejudged["outcome"] == verdict["outcome"] and rejudged["rules"] == verdict["rules"]
    assert rejudged["outcome_details"]["contrast"] == pytest.approx(verdict["outcome_details"]["contrast"], rel=0.05)
    assert "untrimmed" in rejudged["outcome_details"]["contrast_source"]
    capsys.readouterr()
    assert cli.main(["outcomes", str(tmp_path), "--relative-to", str(tmp_path), "--out", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert f"| old_run | {json.loads((run / 'config.json').read_text())['train']['seed']} |" in table
    assert verdict["outcome"] in table


def test_inspect_evaluate_reproduces_metrics(cli_run, grid_lines_dataset_path, monkeypatch):
    text = describe_checkpoint(cli_run)
    assert "checkpoints/last/1 (after epoch 2," in text and "block enc0" in text and "layerscale_abs_mean" in text
    # evaluate_checkpoint finds the dataset through the cache; point the cache at the test one.
    from jaxfno import inspect as inspect_module
    from jaxfno.data import load_dataset

    monkeypatch.setattr(inspect_module, "ensure_dataset", lambda cfg, root: load_dataset(grid_lines_dataset_path))
    recomputed = evaluate_checkpoint(cli_run / "checkpoints" / "last")
    stored = json.loads((cli_run / "metrics.json").read_text())
    for key in ("mae", "mse", "ssim"):
        np.testing.assert_allclose(recomputed[key], stored[key], rtol=1e-5)


def test_branch_changes_take_effect_from_the_branch_point(cli_run, grid_lines_dataset_path, tmp_path, capsys):
    """From the best checkpoint of a 2-epoch run: one more epoch without the short last batch
    (40 patterns: 16 + 16 steps instead of 16 + 16 + 8) and with a clip threshold that bites."""
    source = json.loads((cli_run / "history.json").read_text())
    best = int(np.argmin(source["val_loss"]))
    out = tmp_path / "branch"
    code = cli.main(["branch", str(cli_run), "--from", "best", "--out", str(out), "--dataset",
                     str(grid_lines_dataset_path), "--set", "train.epochs=3", "--set", "train.drop_last=true",
                     "--set", "optim.grad_clip=1e-4"])
    assert code == 0
    assert f"after epoch {best + 1} (best)" in capsys.readouterr().out
    h = json.loads((out / "history.json").read_text())
    kept = 3 * (best + 1)  # the source's steps up to its best epoch
    assert h["step_loss"][:kept] == source["step_loss"][:kept]
    assert len(h["val_loss"]) == 3 and len(h["step_loss"]) == kept + 2 * (2 - best)
    post = np.array(h["grad_norm_postclip"])
    assert (post[kept:] <= 1e-4 * (1 + 1e-5)).all() and (post[:kept] > 1e-4).all()
    assert h["epoch_steps"] == [3] * (best + 1) + [2] * (2 - best)
    assert json.loads((out / "config.json").read_text())["train"]["drop_last"] is True
    # Side by side with its source from the branch point on: a table row each, and the figure.
    assert cli.main(["compare", str(cli_run), str(out), "--labels", "source", "branch",
                     "--from-epoch", str(best + 1), "--out", str(tmp_path / "compare.png")]) == 0
    table = capsys.readouterr().out
    assert f"| branch | 3 | {min(h['val_loss']):.4f}" in table and "| source | 2 |" in table
    assert f"{max(h['grad_norm'][3 * best:]):.4g}" in table
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_inspect_and_branch_reach_one_step_of_a_kind(cli_run, grid_lines_dataset_path, tmp_path, capsys):
    """``last`` keeps two epochs: the older one is reachable by path and by --after-epoch; a run
    without kept epochs says where the state is, and contradictory sources are refused."""
    assert "checkpoints/last/0 (after epoch 1," in describe_checkpoint(cli_run / "checkpoints" / "last" / "0")
    args = ["--dataset", str(grid_lines_dataset_path), "--set", "train.epochs=3"]
    last = cli_run / "checkpoints" / "last"
    refused = [([str(cli_run), "--after-epoch", "1"], 1,
                f"checkpoints/epochs: no checkpoint of step 0 (epoch 1); it holds none; checkpoints/last "
                f"holds it: pass {last}"),
               ([str(last / "1"), "--after-epoch", "1"], 2, "is the state after epoch 2, not after epoch 1"),
               ([str(last / "1"), "--from", "best"], 2, "is a last checkpoint; --from best names another kind"),
               ([str(last), "--after-epoch", "3"], 1, "no checkpoint of step 2 (epoch 3); it holds 0, 1 "
                                                       "(train with --keep-epochs-from")]
    for i, (source, code, message) in enumerate(refused):
        assert cli.main(["branch", *source, "--out", str(tmp_path / str(i)), *args]) == code
        assert message in capsys.readouterr().err
        assert not (tmp_path / str(i)).exists()
    out = tmp_path / "c"
    assert cli.main(["branch", str(last), "--after-epoch", "1", "--out", str(out), "--keep-epochs-from", "3",
                     *args]) == 0
    assert "after epoch 1 (last)" in capsys.readouterr().out
    h = json.loads((out / "history.json").read_text())
    assert h["branch"]["epoch"] == 0 and len(h["val_loss"]) == 3
    assert h["keep_epochs_from"] == 3 and checkpoint.good_epochs(out, "epochs") == [2]


def test_train_and_study_pass_keep_epochs_on(cli_run, grid_lines_dataset_path, tmp_path, monkeypatch):
    from jaxfno import pipeline
    from jaxfno.study import runner

    seen = {}

    def fake(name):
        def record(*args, **kwargs):
            seen[name] = kwargs.get("keep_epochs_from")
            raise KeyboardInterrupt  # stop before anything is trained
        return record

    monkeypatch.setattr(pipeline, "run_one", fake("train"))
    monkeypatch.setattr(runner, "run_members", fake("study"))
    monkeypatch.setattr(runner.Study, "dataset", lambda self, key: None)  # none is built
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", "--out", str(tmp_path / "t"), "--dataset", str(grid_lines_dataset_path),
                  "--keep-epochs-from", "4", *TINY_TRAIN])
    with pytest.raises(KeyboardInterrupt):
        cli.main(["study", "stage-a", "--scale", "smoke", "--seeds", "1", "--arms", "stable",
                  "--out", str(tmp_path / "s"), "--keep-epochs-from", "5"])
    assert seen == {"train": 4, "study": 5}


def test_the_parser_knows_every_checkpoint_kind():
    assert CHECKPOINT_KINDS == checkpoint.KINDS


@pytest.mark.parametrize("override, message", [("train.drop_last=1", "takes bool"),
                                               ("model.width=8", "keeps the source's model"),
                                               ("train.epochs=2", "nothing would be trained"),
                                               ("optim.learning_rate=1", "no field")])
def test_bad_branch_is_refused_before_training(override, message, cli_run, grid_lines_dataset_path,
                                               tmp_path, capsys):
    out = tmp_path / "branch"
    assert cli.main(["branch", str(cli_run), "--out", str(out), "--set", override,
                     "--dataset", str(grid_lines_dataset_path)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--lr", "0"], "lr=0.0"),
    (["--lr=-1e-3"], "lr="),
    (["--grad-clip=-1"], "grad_clip"),
    (["--scheduler", "warmup_cosine", "--warmup-epochs", "5", "--epochs", "5"], "warmup_epochs"),
    (["--nphotons", "0"], "nphotons"),
    (["--coordinator", "localhost:1"], "go together"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], "process id 2"),
    (["--nimgs-train", "0"], "nimgs_train"),
])
def test_bad_training_input_fails_before_compiling(args, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["train", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_train_set_changes_the_written_config(grid_lines_dataset_path, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--dataset", str(grid_lines_dataset_path), "--width", "2",
                     "--blocks", "2", "--modes", "2", "--train-subset", "16", "--epochs", "3",
                     "--set", "optim.lr=5e-4", "--set", "train.stop_after=1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["lr"] == 5e-4 and cfg["train"]["stop_after"] == 1 and cfg["model"]["width"] == 2
    assert len(json.loads((out / "history.json").read_text())["val_loss"]) == 1


def test_execution_choices_are_recorded_and_change_no_numbers(grid_lines_dataset_path, tmp_path):
    """An execution choice (flag or --set) reaches the run's history, not its config or hash,
    and the run's numbers agree with the default's up to float rounding."""
    runs = {}
    for name, extra in (("default", []),
                        ("other", ["--conv3x3", "im2col", "--set", "execution.spectral_transform=fft",
                                   "--set", "execution.member_axis=vmap", "--update", "full"])):
        out = tmp_path / name
        assert cli.main(["train", "--out", str(out), "--dataset", str(grid_lines_dataset_path), "--width", "2",
                         "--blocks", "2", "--modes", "2", "--train-subset", "32", "--epochs", "1", *extra]) == 0
        runs[name] = [json.loads((out / f).read_text()) for f in ("config.json", "history.json")]
    (cfg, default), (other_cfg, other) = runs["default"], runs["other"]
    assert cfg == other_cfg  # the science config (and its hash) is the same
    assert other["execution"]["conv3x3"] == "im2col" and other["execution"]["spectral_transform"] == "fft"
    assert other["execution"]["member_axis"] == "vmap" and other["execution"]["update"] == "full"
    assert default["execution"]["conv3x3"] == "xla" and default["execution"]["update"] == "reachable"
    for key in ("step_loss", "val_loss", "grad_norm"):
        np.testing.assert_allclose(other[key], default[key], rtol=1e-4)


@pytest.mark.parametrize("item, message", [
    ("optim.lr=abc", "optim.lr takes float, not 'abc'"),
    ("optim.learning_rate=1", "optim has no field 'learning_rate'"),
    ("solver.lr=1", "no config section 'solver'"),
    ("optim.lr", "is not SECTION.FIELD=VALUE"),
    ("optim.lr=0", "lr=0.0 must be > 0"),
    ("train.seed=true", "train.seed takes int, not True"),
    ("model.blocks=8", "at most 7 blocks fit"),
    ("model.in_channels=2", "the input is one channel"),
])
def test_bad_set_is_one_line_before_anything_is_built(item, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["train", "--out", str(out), "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxfno: invalid configuration: ") and message in err
    assert not out.exists()


def test_a_field_given_by_a_flag_and_by_set_is_refused(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "x"), "--lr", "1e-3", "--set", "optim.lr=5e-4"]) == 2
    assert "optim.lr given both by a flag and by --set" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["study", "stage-a"], ["branch"], ["data", "build"],
                                     ["model", "summary"], ["bench"]])
def test_every_flag_has_a_help_line(command):
    parser = cli.build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (command, action.option_strings or action.dest)


def test_flags_come_from_the_dataclasses():
    """No flag given: the dataclass defaults (the hash of the default config is unchanged);
    the older flag names of committed scripts still name their fields."""
    parse = cli.build_parser().parse_args
    assert cli.run_config_from_args(parse(["train", "--out", "x"])) == RunConfig()
    assert RunConfig().config_hash() == "c3c9f987f258"
    cfg = cli.run_config_from_args(parse([
        "train", "--out", "x", "--cap", "64", "--data-seed", "3", "--no-set-phi", "--drop-last", "--zero-gamma",
        "--batch-gain", "upstream", "--arch", "stable_hybrid", "--grad-clip", "0", "--lr", "1e-3",
        "--scheduler", "constant", "--epochs", "8", "--batch-size", "16", "--seed", "20260130",
        "--nphotons", "1e9", "--probe", "gaussian", "--stop-after", "2", "--b2", "0.99"]))
    assert (cfg.model.max_hidden_channels, cfg.data.noise_seed, cfg.data.set_phi, cfg.train.drop_last) == (64, 3, False, True)
    assert (cfg.model.zero_gamma, cfg.physics.batch_gain, cfg.train.seed, cfg.train.stop_after) == (True, "upstream", 20260130, 2)
    assert cfg.optim.b2 == 0.99 and cfg.data.probe == "gaussian"
    # Flags and --set are validated together: a warmup shorter than the changed epochs is fine.
    cfg = cli.run_config_from_args(parse(["train", "--out", "x", "--epochs", "3", "--scheduler", "warmup_cosine",
                                          "--set", "optim.warmup_epochs=2"]))
    assert (cfg.train.epochs, cfg.optim.warmup_epochs) == (3, 2)
    probe = cli.run_config_from_args(parse(["train", "--out", "x", "--set", "data.probe=my_probe.npz"])).data.probe
    assert probe == str(pathlib.Path("my_probe.npz").absolute())


def test_add_config_flags_takes_any_dataclass():
    """How another section (e.g. execution) gets its flags: one call, read back with config_from_args."""
    import dataclasses

    from jaxfno.config import field

    @dataclasses.dataclass(frozen=True)
    class Extra:
        """How it runs. More words."""
        kernel: str = field("auto", "which kernel", choices=("auto", "fast"))
        threads: int = field(2, "threads")

    parser = cli.ArgumentParser(prog="x")
    cli.add_run_flags(parser)
    cli.add_config_flags(parser, Extra, "extra")
    assert cli.config_from_args(parser.parse_args([]), Extra, "extra") == Extra()
    assert cli.config_from_args(parser.parse_args(["--kernel", "fast", "--threads", "4"]), Extra, "extra") \
        == Extra("fast", 4)
    assert "which kernel [extra.kernel; default: auto]" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "many"])
    # --set reaches the extra section too; the run config leaves those items to it.
    args = parser.parse_args(["--set", "extra.threads=8", "--set", "optim.lr=5e-4"])
    assert cli.config_from_args(args, Extra, "extra") == Extra(threads=8)
    assert cli.run_config_from_args(args) == RunConfig().with_overrides(["optim.lr=5e-4"])
    with pytest.raises(cli.ConfigError, match="extra has no field 'thread'"):
        cli.run_config_from_args(parser.parse_args(["--set", "extra.thread=8"]))


def test_study_set_changes_the_dataset_and_the_scale():
    parse = cli.build_parser().parse_args
    base = ["study", "stage-a", "--out", "x", "--scale", "smoke"]
    data, scale = cli.study_data_and_scale(parse([*base, "--set", "model.width=8", "--set", "train.stop_after=2",
                                                  "--set", "data.probe=gaussian"]))
    assert (scale.name, scale.width, scale.stop_after, scale.epochs) == ("smoke", 8, 2, stage_a.SCALES["smoke"].epochs)
    assert data.probe == "gaussian"
    cfg = stage_a.config("stable", scale, 1, data)
    assert cfg.model.width == 8 and cfg.train.stop_after == 2 and cfg.data.probe == "gaussian"
    for item, message in [("optim.lr=1e-4", "the arms, conditions or seeds set this field"),
                          ("train.seed=1", "the arms, conditions or seeds set this field"),
                          ("model.blocks=9", "at most 7 blocks fit"),
                          ("train.stop_after=7", "stop_after=7 must be in [0, epochs=6]"),
                          ("model.width=x", "model.width takes int")]:
        with pytest.raises(cli.ConfigError, match=re.escape(message)):
            cli.study_data_and_scale(parse([*base, "--set", item]))


def test_bench_set_reaches_its_sections_only(capsys):
    args = cli.build_parser().parse_args(["bench", "model", "--set", "model.width=2", "--modes", "2"])
    assert cli._model_config(args) == cli.ModelConfig(width=2, modes=2)
    assert cli.main(["bench", "model", "--set", "optim.lr=1"]) == 2  # bench has no optim section
    assert "no config section 'optim'" in capsys.readouterr().err


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--out", "x", "--epochs", "2.5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "argument --epochs: epochs takes int, not 2.5" in err


@pytest.mark.parametrize("scale, message", [("proxy", "no scale 'proxy' yet"), ("bogus", "invalid choice: 'bogus'")])
def test_unknown_scales_say_why(scale, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(["study", "stage-a", "--out", "x", "--scale", scale])
    err = capsys.readouterr().err
    assert message in err and "proxy_full_w8" in err


@pytest.mark.parametrize("argv", [["bench", "seeds", "--members", "0"], ["bench", "model", "--repeats", "0"],
                                  ["bench", "model", "--batch", "-1"],
                                  ["study", "stage-a", "--out", "x", "--seeds", "0"]])
def test_counts_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "is not a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--optimizer", "rmsprop"), ("--arch", "unet"),
                                         ("--scheduler", "cyclic")])
def test_unknown_choices_are_rejected(flag, value, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "--out", str(tmp_path / "x"), flag, value])


def test_model_summary_counts(capsys):
    assert cli.main(["model", "summary", "--arch", "stable_hybrid", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["torch_numel"] == 17_204_610


def test_model_summary_table(capsys):
    assert cli.main(["model", "summary", "--arch", "hybrid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kernel = next(line for line in lines if line.startswith("lifter.conv1.kernel"))
    assert kernel.split()[1:] == ["(3,", "3,", "1,", "32)", "288"]
    assert any(line.split()[0] == "torch_numel" for line in lines)


@pytest.mark.parametrize("tunables, opt_out, reexec", [
    (None, None, True), ("glibc.malloc.arena_max=2", None, True),
    ("glibc.malloc.hugetlb=0", None, False), (None, "0", False),
])
def test_command_reexecutes_once_with_huge_pages(tunables, opt_out, reexec, monkeypatch):
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda path, args, env: calls.append((args, env)))
    monkeypatch.setattr(cli.sys, "argv", ["jaxfno", "model", "summary"])
    for name, value in (("GLIBC_TUNABLES", tunables), ("JAXFNO_HUGEPAGES", opt_out)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    cli.reexec_with_huge_pages()
    if not reexec or cli.platform.libc_ver()[0] != "glibc":
        assert calls == []
        return
    (args, env), = calls
    assert args[1:] == ["-m", "jaxfno", "model", "summary"]
    assert env["GLIBC_TUNABLES"] == ":".join(filter(None, [tunables, "glibc.malloc.hugetlb=1"]))


def test_command_runs_after_reexecuting(tmp_path):
    """End to end: the console entry re-executes itself and still does its job."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-m", "jaxfno", "model", "summary", "--arch", "hybrid", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)


def test_wilson_interval():
    low, high = wilson_interval(0, 3)
    assert low == 0.0 and high == pytest.approx(0.5615, abs=1e-3)
    low, high = wilson_interval(3, 3)
    assert high == 1.0 and low == pytest.approx(0.4385, abs=1e-3)


def test_study_groups_compatible_arms_into_programs(grid_lines_dataset, tmp_path):
    study = Study(stage_a.ARMS, "smoke", stage_a.seeds_for(2), tmp_path, grid_lines_dataset,
                  max_members=0)
    # Without a member limit the six Adam/norm-clip stable arms share one program;
    # control (hybrid), the two upstream arms (physics) and symmetric (model) each need their own.
    sizes = sorted(len(g) for g in study.groups)
    assert sizes == [2, 2, 2, 2, 12]
    chunked = Study(stage_a.ARMS, "smoke", stage_a.seeds_for(2), tmp_path, grid_lines_dataset,
                    max_members=3)
    assert max(len(g) for g in chunked.groups) == 3
    with pytest.raises(ValueError, match="unknown arm"):
        Study(["nope"], "smoke", [1], tmp_path, grid_lines_dataset)


def test_data_build_and_show(grid_lines_dataset_path, tmp_path, capsys):
    # Rebuilding into an existing dataset of the same config reuses it after verifying hashes.
    assert cli.main(["data", "build", "--out", str(grid_lines_dataset_path)]) == 0
    assert cli.main(["data", "show", str(grid_lines_dataset_path)]) == 0
    shown = capsys.readouterr().out
    assert "noise floor" in shown.lower() and "6889" in shown
    # A different config into the same directory is refused and nothing is written.
    assert cli.main(["data", "build", "--out", str(grid_lines_dataset_path), "--no-set-phi"]) == 1
    assert str(grid_lines_dataset_path) in capsys.readouterr().err


def test_loop_overhead_benchmark_runs(grid_lines_dataset):
    from jaxfno.bench import bench_loop_overhead
    from jaxfno.config import ModelConfig

    result = bench_loop_overhead(grid_lines_dataset, ModelConfig(width=2, blocks=2, modes=2), steps=2, batch=4,
                                 repeats=2)
    assert result["loop_step_s"] > 0 and result["bare_step_s"] > 0 and result["batch"] == 4


@pytest.mark.slow  # CI time: minutes on 2 cores; run with -m slow
def test_study_throughput_benchmark(grid_lines_dataset, monkeypatch):
    """Seed-runs per hour: K members together, K sequential runs, the PyTorch twin's run."""
    from jaxfno.bench import bench_study
    from jaxfno.study import stage_a

    tiny = stage_a.Scale("tiny", width=2, blocks=2, modes=2, train_subset=41, epochs=3, seeds=1)
    monkeypatch.setitem(stage_a.SCALES, "tiny", tiny)
    result = bench_study("tiny", 1, 1, lambda cfg: grid_lines_dataset, condition="fixed")
    for way in ("together", "sequential", "torch"):
        assert result[way]["seed_runs_per_hour"] > 0, way
    assert result["epochs_per_run"] == 3 and result["together"]["programs"] == 1
    assert result["best_jax"] in ("together", "sequential") and result["jax_over_torch"] > 0


def test_profile_benchmark_traces_and_summarises_device_timelines(grid_lines_dataset, tmp_path):
    import gzip

    from jaxfno.bench import bench_profile, format_profile, summarise_trace
    from jaxfno.config import ModelConfig

    result = bench_profile(grid_lines_dataset, ModelConfig(width=2, blocks=2, modes=2), tmp_path / "trace",
                           members=2, steps=2)
    assert result["wall_s_per_step"] > 0 and pathlib.Path(result["trace"]).exists()
    assert "wall" in format_profile(result)
    # A GPU trace: two overlapping kernels on one stream, one on another, a host event ignored.
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #13"}},
        {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 0.0, "dur": 10.0, "name": "conv"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 5.0, "dur": 10.0, "name": "conv"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 30.0, "dur": 2.0, "name": "fusion.1"},
        {"ph": "X", "pid": 1, "tid": 8, "ts": 0.0, "dur": 4.0, "name": "dot"},
        {"ph": "X", "pid": 2, "tid": 3, "ts": 0.0, "dur": 100.0, "name": "python"},
    ]
    trace = tmp_path / "gpu.trace.json.gz"
    trace.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    summary = summarise_trace(trace, steps=2)
    assert set(summary) == {"/device:GPU:0 Stream #13", "/device:GPU:0 XLA Ops"}
    stream = summary["/device:GPU:0 Stream #13"]
    assert stream["busy_s_per_step"] == pytest.approx(17e-6 / 2)  # union [0, 15] + [30, 32]
    assert stream["top"][0] == ["conv", pytest.approx(20e-6 / 2), 1.0]
    assert stream["events_per_step"] == 1.5


def test_study_expectations_keep_one_section_per_device(tmp_path):
    """A seed collapses on one machine and not on another: each device's runs get their own section."""
    from jaxfno.io import write_json
    from jaxfno.study import stage_a

    def run(name, seed, device, outcome):
        d = tmp_path / name / f"seed{seed}"
        write_json(d / "config.json", stage_a.config("stable", "smoke", seed).to_dict())
        write_json(d / "history.json", {"val_loss": [0.1, 0.3], "execution": {"device": device}})
        for artifact in ("metrics.json", "stats.json"):
            write_json(d / artifact, {})
        write_json(d / "verdict.json", {"outcome": outcome, "outcome_details": {"outcome": outcome,
            "events": [], "best_val_loss": 0.1, "final_val_loss": 0.3, "plateau": 0.28, "contrast": 0.0}})

    run("cpu", 1, "cpu", "collapsed_constant")
    run("gpu", 1, "NVIDIA H200", "healthy")
    run("gpu", 2, "NVIDIA H200", "diverged")
    file = tmp_path / "expectations.json"
    write_json(file, {"_comment": "kept", "reduced": {"x": "kept"}})
    assert cli.main(["study", "expectations", "--scale", "smoke", "--file", str(file),
                     str(tmp_path / "cpu"), str(tmp_path / "gpu")]) == 0
    sections = json.loads(file.read_text())
    assert sections["_comment"] == "kept" and sections["reduced"] == {"x": "kept"}
    assert list(sections["smoke"]) == ["fixed-stable-seed1"] and "on cpu" in sections["smoke"]["fixed-stable-seed1"]
    assert list(sections["smoke@NVIDIA H200"]) == ["fixed-stable-seed2"]
    assert stage_a.expectation_section("smoke", {"execution": {"device": "cpu"}}) == "smoke"


def test_study_members_per_program_reaches_the_study(monkeypatch, tmp_path):
    """`--members-per-program 1` trains seeds one by one (each finished seed a result on a slow machine)."""
    import jaxfno.study.runner as runner

    seen = {}

    class Stop(Exception):
        pass

    def fake_study(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(runner, "Study", fake_study)
    with pytest.raises(Stop):
        cli.main(["study", "stage-a", "--scale", "smoke", "--seeds", "2", "--members-per-program", "1",
                  "--out", str(tmp_path)])
    assert seen["max_members"] == 1
    with pytest.raises(SystemExit):
        cli.main(["study", "stage-a", "--scale", "smoke", "--members-per-program", "-1", "--out", str(tmp_path)])
