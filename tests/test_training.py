"""Training engine: every knob provably reaches the computation (SPEC §4, §9)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfno.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxfno.data import build_dataset, load_dataset
from jaxfno.models import reachable_shapes
from jaxfno.execution import ExecutionConfig
from jaxfno.provenance import code_commit, host_cpu
from jaxfno.pipeline import RunDirError, branch_run, prepare_run_dir, run_members, run_one, run_stats
from jaxfno.report.study import PLOTS, write_report
from jaxfno.study.runner import RunKey
from jaxfno.training import checkpoint
from jaxfno.training import abstract_model, build_engine, epoch_batches, initial_state, train_members
from jaxfno.training.optim import scheduled_lr, with_hyperparam


def tiny(**changes) -> RunConfig:
    """A 2-level hybrid small enough to train in seconds; 40 patterns = 16 + 16 + 8 per epoch."""
    cfg = RunConfig(
        model=ModelConfig(arch="hybrid", width=4, blocks=2, modes=4),
        train=TrainConfig(epochs=2, batch_size=16, infer_batch_size=8, train_subset=40),
    )
    return cfg.replace(**{s: getattr(cfg, s).replace(**v) for s, v in changes.items()})


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def engine_state(configs, dataset, execution=ExecutionConfig()):
    graphdef, _, rest = abstract_model(configs[0].model, execution)
    engine, _ = build_engine(configs[0], dataset, graphdef, rest, execution)
    return engine, jax.device_put(engine.step_layout(initial_state(engine, configs)))


def run_steps(engine, state, dataset, steps: int, lrs=None):
    """``steps`` training steps on the same fixed batch for every member; returns losses."""
    train_x = jax.numpy.asarray(dataset.train.diffraction[:64])
    k = jax.tree.leaves(state.params)[0].shape[0]
    idx = np.tile(np.arange(16, dtype=np.int32), (k, 1))
    mask = np.ones((k, 16), np.float32)
    if lrs is not None:
        state = state._replace(opt_state=with_hyperparam(state.opt_state, "learning_rate", lrs))
    losses = []
    for _ in range(steps):
        state, logs = engine.train_step(state, train_x, idx, mask)
        losses.append(np.asarray(logs["loss"]))
    return state, np.array(losses)


# --- schedule, clipping, seeds in one two-member program ----------------------------------


EPOCHS = 4


@pytest.fixture(scope="module")
def schedule_runs(grid_lines_dataset, tmp_path_factory):
    """Two members of one compiled program: warmup-cosine without clipping, and a tiny clip."""
    out = tmp_path_factory.mktemp("schedule")
    warm = tiny(optim=dict(lr=5e-4, scheduler="warmup_cosine", warmup_epochs=2),
                train=dict(epochs=EPOCHS))
    clipped = tiny(optim=dict(lr=1e-3, grad_clip=1e-3), train=dict(epochs=EPOCHS, seed=7))
    return run_members([warm, clipped], [out / "warm", out / "clip"], grid_lines_dataset)


def test_applied_lr_equals_schedule(schedule_runs):
    """Each member's configured schedule is the rate its optimiser applied (read back per step)."""
    for result in schedule_runs:
        steps = result.history["steps_per_epoch"]
        assert steps == 3  # 16 + 16 + 8: the partial batch is kept
        expected = [scheduled_lr(result.config.optim, EPOCHS, e) for e in range(EPOCHS)]
        np.testing.assert_allclose(result.history["lr_epoch"], expected, rtol=1e-6)
        np.testing.assert_allclose(result.history["lr"], np.repeat(expected, steps), rtol=1e-6)
    warm, clipped = ([scheduled_lr(r.config.optim, EPOCHS, e) for e in range(EPOCHS)] for r in schedule_runs)
    assert warm[0] < warm[1] < warm[2] > warm[3]  # warmup, then cosine decay
    assert clipped == [1e-3] * EPOCHS


def test_clipping_respects_threshold_and_no_clip_is_identity(schedule_runs):
    warm, clipped = schedule_runs
    pre, post = np.array(clipped.history["grad_norm"]), np.array(clipped.history["grad_norm_postclip"])
    assert (pre > 1e-3).all()  # the threshold bites on every step
    assert (post <= 1e-3 * (1 + 1e-5)).all()
    assert clipped.history["diagnostics"]["clipped_fraction"] == [1.0] * EPOCHS
    np.testing.assert_allclose(warm.history["grad_norm_postclip"], warm.history["grad_norm"], rtol=1e-6)
    assert warm.history["diagnostics"]["clipped_fraction"] == [0.0] * EPOCHS


def test_run_artifacts_are_complete(schedule_runs):
    result = schedule_runs[0]
    for name in ("config.json", "history.json", "metrics.json", "stats.json", "verdict.json",
                 "recon.npz", "recon.png"):
        assert (result.run_dir / name).stat().st_size > 0
    h = result.history
    assert len(h["train_loss"]) == len(h["val_loss"]) == EPOCHS
    assert len(h["grad_norm"]) == len(h["grad_norm_postclip"]) == 3 * EPOCHS
    assert set(h["diagnostics"]["blocks"]) == {"enc0", "enc1", "bottleneck"}
    assert checkpoint.latest_epoch(result.run_dir, "last") == EPOCHS - 1
    assert checkpoint.latest_epoch(result.run_dir, "best") == int(np.argmin(h["val_loss"]))
    assert result.stats["best_val_loss"] == min(h["val_loss"])
    assert h["execution"] == {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
                              "processes": 1, "commit": code_commit(), "host_cpu": host_cpu(),
                              **ExecutionConfig().record()}
    assert h["execution"]["host_cpu"]
    assert h["execution"]["member_axis"] in ("vmap", "unroll") and h["execution"]["update"] == "reachable"
    # Where the wall time went, beyond the epochs' own seconds.
    assert set(h["timing"]) == {"setup_seconds", "bookkeeping_seconds", "checkpoint_wait_seconds",
                                "final_prediction_seconds"}
    assert all(seconds > 0 for seconds in h["timing"].values())


@pytest.mark.parametrize("amp_ssim, amp_mae, below_floor, success", [
    (0.21, 0.50, True, False), (0.27, 0.50, False, False), (None, None, False, False), (0.85, 0.10, False, True)])
def test_run_stats_flags(amp_ssim, amp_mae, below_floor, success):
    history = {"val_loss": [0.5, 0.4], "train_loss": [0.5, 0.4], "grad_norm": [1.0, 2.0],
               "nonfinite_step": None, "diagnostics": {"blocks": {}}}
    metrics = {"ssim": [amp_ssim, 0.9], "mae": [amp_mae, 0.1], "psnr255": [30.0, 30.0]}
    verdict = {"collapsed": False, "outcome": "healthy",
               "outcome_details": {"plateau": 0.28, "contrast": 0.9,
                                   "time_to_divergence": {"step": 1, "observed": False, "epoch": None}}}
    stats = run_stats(tiny(), history, metrics, {"ssim": [0.277, 0.843]}, verdict)
    assert stats["outcome"] == "healthy" and stats["plateau"] == 0.28
    assert stats["amp_ssim_below_floor"] is below_floor and stats["meets_success"] is success


# --- optimisers, learning rate, seeds -----------------------------------------------------


def test_optimizers_give_different_trajectories(grid_lines_dataset):
    params = {}
    for name, extra in (("adam", {}), ("adamw", {"weight_decay": 0.01}), ("sgd", {"momentum": 0.9})):
        engine, state = engine_state([tiny(optim=dict(optimizer=name, **extra))], grid_lines_dataset)
        if name == "adam":
            start = leaves(state.params)
        np.testing.assert_array_equal(leaves(state.params)[0], start[0])  # same initial parameters
        state, _ = run_steps(engine, state, grid_lines_dataset, 3)
        params[name] = leaves(state.params)
    for a, b in (("adam", "adamw"), ("adam", "sgd"), ("adamw", "sgd")):
        assert any(not np.allclose(x, y, rtol=0, atol=1e-9) for x, y in zip(params[a], params[b])), (a, b)


@pytest.mark.parametrize("optim", [
    pytest.param(dict(optimizer="adam", grad_clip=1e-2), id="adam-norm"),
    pytest.param(dict(optimizer="sgd", momentum=0.9, grad_clip=1e-3, grad_clip_algorithm="value"),
                 id="sgd-value", marks=pytest.mark.slow),
])
def test_reachable_update_trains_like_the_full_update(grid_lines_dataset, monkeypatch, optim):
    """Updating only the gradient-receiving blocks gives the full update's training: same
    losses, parameters and optimiser state. With 40 modes, 40×33 of the 64×64 level's 40×40
    block and 20×17 of the bottleneck's 20×20 are reachable."""
    cfg = tiny(model=dict(modes=40), optim=optim)
    shapes = reachable_shapes(cfg.model)
    assert shapes["enc"][0]["spectral"]["weight_im"] == (40, 33, 4, 4)
    assert shapes["bottleneck"]["spectral"]["weight_re"] == (20, 17, 8, 8)
    trained = {}
    for scope in ("full", "reachable"):
        engine, state = engine_state([cfg], grid_lines_dataset, ExecutionConfig(update=scope))
        assert engine.update_scope == scope
        trained_shape = (1, 40, 33, 4, 4) if scope == "reachable" else (1, 40, 40, 4, 4)
        assert state.params["enc"][0]["spectral"]["weight_im"].shape == trained_shape
        moment_shapes = {x.shape for x in jax.tree.leaves(state.opt_state)}  # Adam's or momentum's
        assert trained_shape in moment_shapes
        assert ((1, 40, 40, 4, 4) in moment_shapes) == (scope == "full")
        state, losses = run_steps(engine, state, grid_lines_dataset, 3)
        whole = engine.checkpoint_layout(initial_state(engine, [cfg]), jax.device_get(state))
        trained[scope] = losses, leaves(whole)
    np.testing.assert_allclose(trained["reachable"][0], trained["full"][0], rtol=1e-6)
    for reachable, full in zip(trained["reachable"][1], trained["full"][1], strict=True):
        np.testing.assert_allclose(reachable, full, rtol=1e-5, atol=1e-8)


def test_learning_rate_changes_the_losses(grid_lines_dataset):
    configs = [tiny(optim=dict(lr=1e-3)), tiny(optim=dict(lr=2.5e-4))]
    engine, state = engine_state(configs, grid_lines_dataset)
    lrs = np.array([scheduled_lr(c.optim, c.train.epochs, 0) for c in configs], np.float32)  # as the loop injects
    _, losses = run_steps(engine, state, grid_lines_dataset, 3, lrs=lrs)
    assert losses[0, 0] == losses[0, 1]  # same seed: same start
    assert not np.allclose(losses[1:, 0], losses[1:, 1], rtol=1e-6)


def test_test_stride_reaches_the_stitching(tmp_path):
    """Validation and the final score stitch the test patches at the dataset's own stride."""
    data_cfg = DataConfig(train_stride=32, test_stride=32)  # 11 × 11 patches, cores 32 × 32
    dataset = load_dataset(build_dataset(data_cfg, tmp_path / "data"), expected=data_cfg)
    result = run_one(tiny(data=data_cfg.to_dict(), train=dict(epochs=1)), tmp_path / "run", dataset)
    with np.load(result.run_dir / "recon.npz") as f:
        assert f["prediction"].shape == f["ground_truth"].shape == (352, 352)
    assert result.metrics["ssim"][0] is not None and len(result.history["val_amp_ssim"]) == 1


@pytest.mark.parametrize("train, message", [(dict(drop_last=True, train_subset=8), "not one full batch"),
                                            (dict(train_subset=6890), "exceeds the dataset's 6889")])
def test_training_set_size_is_checked(train, message, grid_lines_dataset, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train_members([tiny(train=train)], [tmp_path / "r"], grid_lines_dataset)


def test_runs_must_name_the_dataset_they_train_on(grid_lines_dataset, tmp_path):
    with pytest.raises(ConfigError, match="not the dataset's"):
        train_members([tiny(data=dict(noise_seed=1))], [tmp_path / "r"], grid_lines_dataset)
    assert not (tmp_path / "r").exists()


def test_seed_reaches_initialisation_and_batch_order(grid_lines_dataset):
    _, state = engine_state([tiny(train=dict(seed=s)) for s in (1, 2, 1)], grid_lines_dataset)
    a, b, again = ([x[k] for x in leaves(state.params)] for k in range(3))
    assert all(not np.array_equal(x, y) for x, y in zip(a, b) if x.std() > 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    assert not np.array_equal(epoch_batches(100, 16, False, 1, 0)[0], epoch_batches(100, 16, False, 2, 0)[0])
    assert not np.array_equal(epoch_batches(100, 16, False, 1, 0)[0], epoch_batches(100, 16, False, 1, 1)[0])
    idx, mask = epoch_batches(100, 16, False, 1, 0)
    assert sorted(idx[mask > 0].tolist()) == list(range(100))  # a permutation, last batch partial


# --- determinism, vmap equivalence, resume ------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(grid_lines_dataset, tmp_path_factory):
    # 40 modes: the 64×64 level's spectral weights have columns no input reaches, so resuming
    # goes through the step's block layout and the whole-array checkpoints. Plateau: the one
    # schedule with state to resume.
    return run_one(tiny(model=dict(modes=40), optim=dict(scheduler="plateau")),
                   tmp_path_factory.mktemp("ref") / "run", grid_lines_dataset)


def test_same_seed_gives_identical_history(reference_run, grid_lines_dataset, tmp_path):
    again = run_one(reference_run.config, tmp_path / "again", grid_lines_dataset)
    for key in ("train_loss", "val_loss", "grad_norm", "lr"):
        assert again.history[key] == reference_run.history[key], key
    assert again.metrics == reference_run.metrics


SEEDS = (11, 12, 13)


@pytest.fixture(scope="module")
def separate_runs(grid_lines_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("separate")
    return [run_one(tiny(train=dict(seed=s)), out / f"s{s}", grid_lines_dataset) for s in SEEDS]


def test_liftings_train_members_alike(grid_lines_dataset):
    """``vmap`` and ``unroll`` (the CPU default) give the same steps; whole runs: below."""
    configs = [tiny(train=dict(seed=s), optim=dict(lr=lr)) for s, lr in ((1, 1e-3), (2, 5e-4))]
    trained = {}
    for axis in ("vmap", "unroll"):
        engine, state = engine_state(configs, grid_lines_dataset, ExecutionConfig(member_axis=axis))
        assert engine.member_axis == axis
        state, losses = run_steps(engine, state, grid_lines_dataset, 3, lrs=np.array([1e-3, 5e-4], np.float32))
        trained[axis] = losses, leaves(state.params)
    np.testing.assert_allclose(trained["unroll"][0], trained["vmap"][0], rtol=1e-5)
    assert not np.allclose(trained["unroll"][0][:, 0], trained["unroll"][0][:, 1])  # members differ
    for unrolled, vmapped in zip(trained["unroll"][1], trained["vmap"][1], strict=True):
        np.testing.assert_allclose(unrolled, vmapped, rtol=1e-4, atol=1e-6)


# Whole runs: the CPU default ("unroll") also runs in every multi-member test, and its step
# equivalence is checked above; the whole-run check of it is slow.
@pytest.mark.parametrize("member_axis", ["vmap", pytest.param("unroll", marks=pytest.mark.slow)])
def test_seeds_in_one_program_match_separate_runs(grid_lines_dataset, separate_runs, tmp_path,
                                                   member_axis):
    # Training only: the final prediction of 3 vmapped members took ~40 s on the 2-core CPU
    # (grouped convolutions); the last epoch's validation (val_loss, val_amp_ssim) already
    # evaluates the final parameters on the whole test split.
    configs = [run.config for run in separate_runs]
    together = train_members(configs, [tmp_path / f"k{s}" for s in SEEDS], grid_lines_dataset,
                             execution=ExecutionConfig(member_axis=member_axis))
    for joint, alone in zip(together.members, separate_runs):
        for key in ("train_loss", "val_loss", "grad_norm", "val_amp_ssim"):
            np.testing.assert_allclose(joint.history[key], alone.history[key], rtol=1e-5)


def test_resume_after_interruption_matches_uninterrupted(reference_run, grid_lines_dataset, tmp_path):
    class Interrupt(Exception):
        pass

    def interrupt_after_first_epoch(epoch, members):
        if epoch == 0:
            raise Interrupt

    run_dir = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        run_one(reference_run.config, run_dir, grid_lines_dataset, on_epoch_end=interrupt_after_first_epoch)
    assert checkpoint.latest_epoch(run_dir) == 0 and not (run_dir / "verdict.json").exists()
    # The schedule was saved after seeing epoch 0, as an uninterrupted run carries it on.
    saved, meta = checkpoint.restore(run_dir, "last")
    assert meta["schedule"]["plateau_best"] == reference_run.history["val_loss"][0]
    # The checkpoint holds whole arrays: trained inside the reachable block (columns < 33),
    # initial values and zero Adam moments outside it.
    engine, _ = engine_state([reference_run.config], grid_lines_dataset)
    start = initial_state(engine, [reference_run.config]).params["enc"][0]["spectral"]["weight_im"][0]
    weight = saved["params"]["enc"]["0"]["spectral"]["weight_im"]
    assert weight.shape == start.shape == (40, 40, 4, 4)
    np.testing.assert_array_equal(weight[:, 33:], start[:, 33:])
    assert not np.allclose(weight[:, :33], start[:, :33], rtol=1e-3)
    moment = saved["opt_state"]["inner_state"]["0"]["nu"]["enc"]["0"]["spectral"]["weight_im"]
    assert moment.shape == (40, 40, 4, 4) and not moment[:, 33:].any() and moment[:, :33].any()
    resumed = run_one(reference_run.config, run_dir, grid_lines_dataset)
    for key in ("train_loss", "val_loss", "grad_norm", "lr"):
        np.testing.assert_allclose(resumed.history[key], reference_run.history[key], rtol=1e-6)
    for key in ("mae", "ssim"):
        np.testing.assert_allclose(resumed.metrics[key], reference_run.metrics[key], rtol=1e-5)


def test_finished_run_is_reused_and_foreign_dir_refused(reference_run, grid_lines_dataset):
    mtime = (reference_run.run_dir / "verdict.json").stat().st_mtime
    again = run_one(reference_run.config, reference_run.run_dir, grid_lines_dataset)
    assert (again.run_dir / "verdict.json").stat().st_mtime == mtime
    with pytest.warns(UserWarning, match="1 of the program's 1 runs is finished and reused as it is, so no epoch"):
        run_one(reference_run.config, reference_run.run_dir, grid_lines_dataset, keep_epochs_from=1)
    assert not (reference_run.run_dir / "checkpoints" / "epochs").exists()
    other = reference_run.config.replace(optim=reference_run.config.optim.replace(lr=1e-4))
    with pytest.raises(RunDirError, match="another config"):
        run_one(other, reference_run.run_dir, grid_lines_dataset)


# --- branches: a run continued from another's checkpoint ---------------------------------


def test_unchanged_branch_continues_like_the_uninterrupted_run(reference_run, grid_lines_dataset, tmp_path):
    """Branching the 2-epoch reference after its last epoch into 3 epochs gives the 3-epoch run:
    weights, Adam moments and step count, plateau state and history all carry over."""
    source_files = {p: p.stat().st_mtime for p in reference_run.run_dir.rglob("*") if p.is_file()}
    longer = reference_run.config.replace(train=reference_run.config.train.replace(epochs=3))
    branch = branch_run(reference_run.run_dir, "last", longer, tmp_path / "branch", grid_lines_dataset)
    uninterrupted = run_one(longer, tmp_path / "uninterrupted", grid_lines_dataset)
    for key in ("train_loss", "val_loss", "grad_norm", "lr", "val_amp_ssim"):
        np.testing.assert_allclose(branch.history[key], uninterrupted.history[key], rtol=1e-6)
    record = {"source": str(reference_run.run_dir.absolute()), "kind": "last", "epoch": 1,
              "source_config_hash": reference_run.config.config_hash()}
    assert branch.history["branch"] == record
    assert json.loads((branch.run_dir / "branch.json").read_text()) == record
    assert {p: p.stat().st_mtime for p in reference_run.run_dir.rglob("*") if p.is_file()} == source_files
    again = branch_run(reference_run.run_dir, "last", longer, branch.run_dir, grid_lines_dataset)
    assert again.history == branch.history  # a finished branch is reused


def test_branch_refuses_what_would_not_continue_the_source(reference_run, diverged_run, grid_lines_dataset,
                                                           tmp_path):
    after_divergence = diverged_run.config.replace(train=diverged_run.config.train.replace(epochs=5))
    with pytest.raises(ConfigError, match="after its non-finite step"):
        branch_run(diverged_run.run_dir, "last", after_divergence, tmp_path / "d", grid_lines_dataset)
    cfg = reference_run.config
    longer = cfg.replace(train=cfg.train.replace(epochs=3))
    cases = [(cfg.replace(model=cfg.model.replace(width=8)), "model"),
             (longer.replace(optim=longer.optim.replace(optimizer="sgd")), "optimizer"),
             (longer.replace(optim=longer.optim.replace(grad_clip_algorithm="value")), "clip algorithm"),
             (cfg, "nothing would be trained")]
    for changed, message in cases:
        with pytest.raises(ConfigError, match=message):
            branch_run(reference_run.run_dir, "last", changed, tmp_path / "b", grid_lines_dataset)
    with pytest.raises(RunDirError, match="directory of its own"):
        branch_run(reference_run.run_dir, "last", longer, reference_run.run_dir, grid_lines_dataset)
    prepare_run_dir(tmp_path / "plain", longer)  # a (started) run of that config, not a branch
    with pytest.raises(RunDirError, match="not this branch"):
        branch_run(reference_run.run_dir, "last", longer, tmp_path / "plain", grid_lines_dataset)


def test_kept_epochs_let_a_branch_start_after_any_of_them(grid_lines_dataset, tmp_path):
    """keep_epochs_from=1 on a 3-epoch run keeps the states after every epoch (steps 0, 1, 2);
    a branch from the one after epoch 2 with the config unchanged replays epoch 3 exactly; a
    resumed run drops a kept epoch past the one it resumes from."""
    cfg = tiny(train=dict(epochs=3))
    run = run_one(cfg, tmp_path / "run", grid_lines_dataset, keep_epochs_from=1)
    assert checkpoint.good_epochs(run.run_dir, "epochs") == [2, 1, 0]
    assert checkpoint.good_epochs(run.run_dir, "last") == [2, 1]  # last still keeps two
    assert run.history["keep_epochs_from"] == 1
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 0 \(epoch 1\); it holds 1, 2"):
        checkpoint.restore(run.run_dir, "last", step=0)
    branch = branch_run(run.run_dir, "epochs", cfg, tmp_path / "branch", grid_lines_dataset, step=1)
    assert branch.history["branch"]["epoch"] == 1 and branch.history["branch"]["kind"] == "epochs"
    for key in ("step_loss", "train_loss", "val_loss", "grad_norm", "lr"):
        assert branch.history[key] == run.history[key], key
    assert "keep_epochs_from" not in branch.history  # the source's setting, not the branch's
    assert not (branch.run_dir / "checkpoints" / "epochs").exists()
    # Killed after epoch 3's kept state, before its last: resumed without keeping, from epoch 2.
    checkpoint.discard_after(run.run_dir, "last", 1)
    (run.run_dir / "verdict.json").unlink()
    resumed = run_one(cfg, run.run_dir, grid_lines_dataset)
    assert checkpoint.good_epochs(run.run_dir, "epochs") == [1, 0] and resumed.history["keep_epochs_from"] == 1
    assert resumed.history["val_loss"] == run.history["val_loss"]


# --- divergence and learning --------------------------------------------------------------


@pytest.fixture(scope="module")
def diverged_run(grid_lines_dataset, tmp_path_factory):
    cfg = tiny(optim=dict(optimizer="sgd", momentum=0.0, lr=1e12), train=dict(epochs=3))
    return run_one(cfg, tmp_path_factory.mktemp("nan") / "run", grid_lines_dataset)


def test_non_finite_stops_run_with_verdict_and_artifacts(diverged_run):
    result = diverged_run
    assert result.verdict["collapsed"] and "non_finite" in result.verdict["rules"]
    step = result.history["nonfinite_step"]
    assert step is not None
    assert f"step {step}" in json.dumps(result.verdict["details"])
    assert result.stats["nan"] is True
    assert len(result.history["val_loss"]) == step // result.history["steps_per_epoch"] + 1  # stopped there
    assert result.history["nonfinite_epoch"] == result.verdict["details"]["non_finite"]["epoch"] == step // 3
    assert (result.run_dir / "recon.png").exists()


def test_non_finite_run_has_the_non_finite_outcome(diverged_run):
    assert diverged_run.verdict["outcome"] == diverged_run.stats["outcome"] == "non_finite"
    assert diverged_run.verdict["outcome_details"]["plateau"] > 0


@pytest.mark.slow  # CI time: minutes on 2 cores; run with -m slow
def test_truncated_horizon_is_the_full_runs_first_epochs(grid_lines_dataset, tmp_path):
    """SPEC §7.3: stopping after E of a warmup-cosine run's epochs trains exactly its first E."""
    cfg = tiny(optim=dict(lr=5e-4, scheduler="warmup_cosine", warmup_epochs=1), train=dict(epochs=3))
    whole = run_one(cfg, tmp_path / "whole", grid_lines_dataset)
    short = run_one(cfg.replace(train=cfg.train.replace(stop_after=2)), tmp_path / "short", grid_lines_dataset)
    assert len(short.history["val_loss"]) == 2
    for key in ("step_loss", "lr", "grad_norm"):
        n = len(short.history[key])
        assert short.history[key] == whole.history[key][:n], key
    assert short.history["val_loss"] == whole.history["val_loss"][:2]
    assert whole.history["lr_epoch"][2] != whole.history["lr_epoch"][1]  # the schedule moves on after


def test_study_report_of_a_run_without_scores(diverged_run, grid_lines_dataset, tmp_path):
    """Its weights predict non-finite values, which score None: the report says n/a."""
    assert diverged_run.stats["amp_ssim"] is None
    write_report({RunKey("diverged", 0): diverged_run}, tmp_path, title="t", command="c",
                 datasets=[grid_lines_dataset], scale="smoke")
    assert all((tmp_path / name).stat().st_size > 0 for name in PLOTS)
    assert "| diverged |" in (tmp_path / "summary.md").read_text()


def test_stopped_member_of_a_shared_program_trains_no_further(grid_lines_dataset, tmp_path, monkeypatch):
    """A member that diverges while the other trains on gets no valid sample after its epoch,
    and the state it is scored with is the one its last checkpoint holds."""
    masks = []

    def recording_build_engine(*args, **kwargs):
        engine, test_x = build_engine(*args, **kwargs)
        step = engine.train_step

        def train_step(state, train_x, idx, mask):
            masks.append(np.asarray(mask))
            return step(state, train_x, idx, mask)

        engine.train_step = train_step
        return engine, test_x

    monkeypatch.setattr("jaxfno.training.loop.build_engine", recording_build_engine)
    diverging = tiny(optim=dict(optimizer="sgd", momentum=0.0, lr=1e12), train=dict(epochs=2))
    healthy = diverging.replace(optim=diverging.optim.replace(lr=1e-3))
    program = train_members([diverging, healthy], [tmp_path / "bad", tmp_path / "good"], grid_lines_dataset)
    bad, good = program.members
    assert bad.stopped and not good.stopped and len(good.history["val_loss"]) == 2
    stop_epoch = len(bad.history["val_loss"]) - 1
    masks = np.array(masks).reshape(2, -1, 2, 16)  # (epoch, step, member, batch)
    assert stop_epoch == 0 and masks[0, :, 0].any()
    assert not masks[stop_epoch + 1:, :, 0].any() and masks[:, :, 1].any(axis=(1, 2)).all()
    saved, _ = checkpoint.restore(bad.run_dir, "last")
    final = checkpoint.to_plain(jax.tree.map(lambda a: np.asarray(a)[0], program.state.params))
    jax.tree.map(np.testing.assert_array_equal, final, saved["params"])  # modes 4: blocks are whole


@pytest.mark.slow  # CI time: minutes on 2 cores; run with -m slow
def test_program_with_a_stopped_member_resumes_after_an_interruption(grid_lines_dataset, tmp_path):
    """A member stopped by a non-finite step saves no more checkpoints; interrupted later, the
    program resumes from the live members' epoch, the stopped one behind, to the uninterrupted
    result."""
    diverging = tiny(optim=dict(optimizer="sgd", momentum=0.0, lr=1e12), train=dict(epochs=3))
    healthy = diverging.replace(optim=diverging.optim.replace(lr=1e-3))

    def interrupt(epoch, members):
        if epoch == 1:
            raise KeyboardInterrupt

    dirs = [tmp_path / "bad", tmp_path / "good"]
    with pytest.raises(KeyboardInterrupt):
        train_members([diverging, healthy], dirs, grid_lines_dataset, on_epoch_end=interrupt)
    assert [checkpoint.latest_epoch(d) for d in dirs] == [0, 1]
    resumed = train_members([diverging, healthy], dirs, grid_lines_dataset).members
    whole = train_members([diverging, healthy], [tmp_path / "bad2", tmp_path / "good2"], grid_lines_dataset).members
    assert resumed[0].stopped and len(resumed[1].history["val_loss"]) == 3
    np.testing.assert_allclose(resumed[1].history["val_loss"], whole[1].history["val_loss"], rtol=1e-6)


def test_step_without_valid_samples_leaves_the_state_unchanged(grid_lines_dataset):
    """Adam's momentum would move the weights on a zero gradient; an all-masked step must not."""
    engine, state = engine_state([tiny()], grid_lines_dataset)
    state, _ = run_steps(engine, state, grid_lines_dataset, 1)  # non-zero moments
    before = leaves(state)
    state, logs = engine.train_step(state, jnp.asarray(grid_lines_dataset.train.diffraction[:16]),
                                    np.arange(16, dtype=np.int32)[None], np.zeros((1, 16), np.float32))
    assert logs["n_valid"][0] == 0
    for a, b in zip(before, leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_update_that_overflows_the_weights_counts_as_non_finite(grid_lines_dataset):
    """A finite loss and gradient can still give non-finite weights (SGD with an infinite LR
    injected): the step reports it, and the next step (non-finite loss) leaves the state alone."""
    engine, state = engine_state([tiny(optim=dict(optimizer="sgd", momentum=0.0))], grid_lines_dataset)
    state = state._replace(opt_state=with_hyperparam(state.opt_state, "learning_rate", np.array([np.inf], np.float32)))
    train_x = jnp.asarray(grid_lines_dataset.train.diffraction[:16])
    batch = np.arange(16, dtype=np.int32)[None], np.ones((1, 16), np.float32)
    state, logs = engine.train_step(state, train_x, *batch)
    assert np.isfinite(logs["loss"]).all() and np.isfinite(logs["grad_norm"]).all()
    assert not logs["finite"][0]
    overflowed = leaves(state)
    assert not all(np.isfinite(leaf).all() for leaf in overflowed)
    state, logs = engine.train_step(state, train_x, *batch)
    assert not logs["finite"][0]
    for a, b in zip(overflowed, leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_hybrid_learns_at_reduced_size(grid_lines_dataset, tmp_path):
    cfg = tiny(model=dict(width=16, blocks=3, modes=8), train=dict(epochs=25, train_subset=256))
    result = run_one(cfg, tmp_path / "learn", grid_lines_dataset)
    initial, final = result.history["step_loss"][0], result.history["train_loss"][-1]
    assert final < initial / 5, (initial, result.history["train_loss"])


@pytest.mark.parametrize("background", [True, False])
def test_checkpoint_writer_snapshots_and_reports_failures(tmp_path, background):
    state = {"w": jnp.arange(4, dtype=jnp.float32)}
    meta = {"history": {"val_loss": [1.0]}}
    with checkpoint.CheckpointWriter(background=background) as writer:
        writer.save(tmp_path / "run", ["last", "best"], 0, state, meta)
        meta["history"]["val_loss"].append(0.5)  # the caller goes on updating both
        state["w"] = state["w"] + 1
    for kind in ("last", "best"):  # one snapshot, saved as each kind
        restored, restored_meta = checkpoint.restore(tmp_path / "run", kind)
        np.testing.assert_array_equal(restored["w"], np.arange(4, dtype=np.float32))
        assert restored_meta["history"]["val_loss"] == [1.0]

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError):
        with checkpoint.CheckpointWriter(background=background) as writer:
            writer.save(blocker / "run", ["last"], 0, state, meta)  # fails on the worker thread


def test_damaged_checkpoint_is_reported(tmp_path):
    checkpoint.save(tmp_path / "run", "last", 0, {"w": np.zeros(3, np.float32)}, {"epoch": 0})
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "last" / "0" / "state")
    with pytest.raises(RuntimeError, match="checkpoint of step 0 cannot be read"):
        checkpoint.restore(tmp_path / "run", "last")
