"""The training loop: K members of one program trained together, epoch by epoch.

A *member* is one run (its own RunConfig and run directory). Members of one program share
everything structural (data, model, physics, optimiser type, clip algorithm, batch shapes) and
may differ in seed, learning rate, schedule and clip threshold, which enter as stacked arrays:
per-member initialisation and batch order, per-member injected hyperparameters.

Per epoch, in order:
  1. set each member's learning rate for the epoch (host schedule → injected hyperparameter);
  2. train: one jit-compiled, vmapped step per batch; logs stay on device until the epoch ends;
  3. validate on the full test split (loss + stitched prediction) and gather diagnostics
     (their programs compile on a worker thread during the first epoch's training);
  4. log (``history.json`` rewritten, so a running study can be watched), checkpoint (last,
     best, and from ``keep_epochs_from`` on every epoch's; on accelerators written on a
     background thread), feed the plateau schedule, stop diverged members.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import jax
import numpy as np

from jaxfno.config import ConfigError, RunConfig
from jaxfno.data import Dataset
from jaxfno.execution import ExecutionConfig
from jaxfno.io import write_json
from jaxfno.provenance import code_commit, host_cpu
from jaxfno.training import checkpoint
from jaxfno.training.batches import epoch_batches, sequential_batches
from jaxfno.training.build import (MEMBER_OPTIM_FIELDS, abstract_model, build_engine, initial_state,
                                   program_signature, with_clip_thresholds)
from jaxfno.training.engine import Engine, TrainState
from jaxfno.training.history import Member, record_epoch
from jaxfno.training.optim import with_hyperparam
from jaxfno.training.placement import MemberPlacement, member_slice, stack


class Progress:
    """One status line on a terminal; silent otherwise (CI logs, pipes)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def update(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


@dataclasses.dataclass
class Program:
    """What training hands to evaluation: the compiled engine, the final stacked state, and the
    test inputs with their batches at the inference batch size (prediction is compiled for them)."""

    engine: Engine
    state: TrainState
    members: list[Member]
    test_x: jax.Array
    infer_idx: np.ndarray
    placement: MemberPlacement

    def predict(self) -> np.ndarray:
        """Stitched prediction of the first test image, one per member."""
        return self.placement.fetch(self.engine.predict(self.state.params, self.test_x, self.infer_idx))


def train_members(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[pathlib.Path],
    dataset: Dataset,
    *,
    resume: bool = True,
    progress: Progress | None = None,
    on_epoch_end: Callable[[int, list[Member]], None] | None = None,
    execution: ExecutionConfig = ExecutionConfig(),
    keep_epochs_from: int = 0,
) -> Program:
    """Train K members in one compiled program; see the module docstring. ``keep_epochs_from``
    = E > 0 keeps the state after every epoch from epoch E (1-based) on in ``checkpoints/epochs``
    (a run's record, not its config: it changes nothing the run computes)."""
    if keep_epochs_from < 0:
        raise ConfigError(f"keep_epochs_from={keep_epochs_from} must be >= 0 (0: keep no epoch's state)")
    setup_start = time.perf_counter()
    n_train = _check_members(configs, dataset)
    cfg0 = configs[0]
    progress = progress or Progress()
    members = [Member(c, pathlib.Path(d)) for c, d in zip(configs, run_dirs)]

    train_x = jax.numpy.asarray(dataset.train.diffraction[:n_train])
    graphdef, _, rest = abstract_model(cfg0.model, execution)
    placement = MemberPlacement.for_members(len(configs))
    engine, test_x = build_engine(cfg0, dataset, graphdef, rest, execution, placement.mesh)
    val_idx, val_mask = sequential_batches(test_x.shape[0], cfg0.train.batch_size)
    infer_idx, _ = sequential_batches(test_x.shape[0], cfg0.train.infer_batch_size)
    probe_x = test_x[: cfg0.train.batch_size]  # fixed batch for activation diagnostics
    # Whole-array member states on the host, what checkpoints hold; outside the blocks the step
    # trains (``engine.step_layout``) their entries keep these values all run.
    template = initial_state(engine, configs)
    start_epoch = 0
    if resume:
        template, start_epoch = _resume(members, template, configs)
    state = jax.block_until_ready(placement.put(engine.step_layout(template)))
    record = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
              "processes": jax.process_count(), "commit": code_commit(), "host_cpu": host_cpu(),
              **execution.record(), "member_axis": engine.member_axis, "update": engine.update_scope}
    for m in members:
        m.history.setdefault("timing", {})["setup_seconds"] = time.perf_counter() - setup_start
        m.history["execution"] = dict(record)
        if keep_epochs_from:  # the first epoch kept over the run's invocations
            m.history["keep_epochs_from"] = min(keep_epochs_from, m.history.get("keep_epochs_from", keep_epochs_from))
        if checkpoint.steps(m.run_dir, "epochs"):  # a kept epoch past the one resumed from is stale
            checkpoint.discard_after(m.run_dir, "epochs", start_epoch - 1)

    epochs = cfg0.train.trained_epochs
    if keep_epochs_from > epochs:
        warnings.warn(f"keep_epochs_from={keep_epochs_from} is past the {epochs} epochs trained: no epoch is kept")
    with checkpoint.CheckpointWriter() as writer, ThreadPoolExecutor(1) as worker:
        evaluation_compiled = worker.submit(_compile_evaluation, engine, state.params, test_x, val_idx,
                                            val_mask, probe_x, infer_idx)
        for epoch in range(start_epoch, epochs):
            if all(m.stopped for m in members):
                break
            t0 = time.perf_counter()
            state, logs, lrs = _train_epoch(engine, state, members, train_x, n_train, epoch, placement, progress)
            train_seconds = time.perf_counter() - t0
            evaluation_compiled.result()  # re-raises a compilation error
            val_loss, scale_free, stitched = engine.evaluate(state.params, test_x, val_idx, val_mask)
            diagnostics = placement.fetch(engine.diagnostics(state.params, probe_x))
            val_loss, scale_free, stitched = placement.fetch((val_loss, scale_free, stitched))
            seconds = time.perf_counter() - t0

            bookkeeping_start = time.perf_counter()
            host_state = engine.checkpoint_layout(template, placement.fetch(state))  # one transfer
            for k, m in enumerate(members):
                if m.stopped:
                    continue
                record_epoch(m, k, epoch, logs, (float(val_loss[k]), float(scale_free[k])), float(lrs[k]),
                             diagnostics, stitched[k], dataset.test.ground_truth, (seconds, train_seconds))
                _save_epoch(writer, m, epoch, member_slice(host_state, k), keep_epochs_from)
            bookkeeping = time.perf_counter() - bookkeeping_start  # history, checkpoints, schedule
            for m in members:
                timing = m.history["timing"]
                timing["bookkeeping_seconds"] = timing.get("bookkeeping_seconds", 0.0) + bookkeeping
            progress.update(f"epoch {epoch + 1}/{epochs} train {members[0].history['train_loss'][-1]:.4f} "
                            f"val {members[0].history['val_loss'][-1]:.4f} ({seconds:.1f} s)")
            if on_epoch_end is not None:
                on_epoch_end(epoch, members)
        wait_start = time.perf_counter()
    for m in members:
        m.history["timing"]["checkpoint_wait_seconds"] = time.perf_counter() - wait_start
    progress.close()
    return Program(engine, state, members, test_x, infer_idx, placement)


def _check_members(configs: Sequence[RunConfig], dataset: Dataset) -> int:
    """That the configs can share one program on ``dataset``; the number of training patterns."""
    if len({program_signature(c) for c in configs}) != 1:
        raise ConfigError("members of one program may differ only in seed, "
                          f"{', '.join(MEMBER_OPTIM_FIELDS)}; got incompatible configs")
    cfg0 = configs[0]
    if cfg0.data != dataset.config:
        raise ConfigError(f"the runs' data config {cfg0.data.to_dict()} is not the dataset's "
                          f"{dataset.config.to_dict()}")
    n_train = dataset.train.diffraction.shape[0]
    if cfg0.train.train_subset > n_train:
        raise ConfigError(f"train_subset={cfg0.train.train_subset} exceeds the dataset's {n_train} "
                          "training patterns (0 uses them all)")
    n_train = cfg0.train.train_subset or n_train
    if cfg0.train.drop_last and n_train < cfg0.train.batch_size:
        raise ConfigError(f"drop_last with {n_train} training patterns and batch_size "
                          f"{cfg0.train.batch_size}: not one full batch, so no step per epoch")
    return n_train


def _resume(members: list[Member], template: TrainState, configs) -> tuple[TrainState, int]:
    """(whole-array state, first epoch to train): from every member's last checkpoint when all
    have one, else the initial ``template`` and epoch 0. Members still training must all be at
    one epoch; a member stopped by a non-finite step saved nothing after it, so it may be behind
    (its masked state no longer changes)."""
    done = [checkpoint.latest_epoch(m.run_dir) for m in members]
    if any(e is None for e in done):
        return template, 0
    restored = []
    for k, m in enumerate(members):
        member_state, meta = checkpoint.restore(m.run_dir, "last", member_slice(template, k))
        if meta["config_hash"] != m.config.config_hash():
            raise RuntimeError(f"{m.run_dir}: checkpoint belongs to another config")
        m.history, m.best_val = meta["history"], meta["best_val"]
        m.schedule.load(meta["schedule"])
        restored.append(member_state)
    live = {e for e, m in zip(done, members) if not m.stopped}
    resume = max(live) if live else max(done)
    if len(live) > 1 or any(e > resume for e in done):
        raise RuntimeError(f"cannot resume members stopped at different epochs: {done}")
    state = jax.tree.map(lambda *xs: np.stack(xs), *restored)
    return with_clip_thresholds(state, configs), resume + 1


def _train_epoch(engine: Engine, state: TrainState, members: list[Member], train_x, n_train: int,
                 epoch: int, placement: MemberPlacement, progress: Progress):
    """One epoch of steps for every member: (state, per-step logs (steps, K) on the host, LRs)."""
    lrs = np.array([m.schedule.lr(epoch) for m in members], np.float32)
    state = state._replace(opt_state=with_hyperparam(state.opt_state, "learning_rate", lrs))
    batches = [epoch_batches(n_train, m.config.train.batch_size, m.config.train.drop_last,
                             m.config.train.seed, epoch) for m in members]
    idx = np.stack([b[0] for b in batches], axis=1)  # (steps, K, B)
    mask = np.stack([b[1] for b in batches], axis=1)
    # A stopped member sharing the program keeps its state: with no valid sample the step leaves
    # it unchanged, so its prediction uses the weights of its last checkpoint.
    mask[:, [k for k, m in enumerate(members) if m.stopped]] = 0.0
    logs = []
    for s in range(idx.shape[0]):
        state, step_logs = engine.train_step(state, train_x, placement.put(idx[s]), placement.put(mask[s]))
        logs.append(step_logs)
        # Reading a member's loss off the device: not where processes hold only their own.
        if progress.enabled and not placement.spans_processes and s % 10 == 0:
            progress.update(f"epoch {epoch + 1} step {s + 1}/{idx.shape[0]} "
                            f"loss {float(step_logs['loss'][0]):.4f} grad {float(step_logs['grad_norm'][0]):.3g} "
                            f"lr {float(step_logs['lr'][0]):.3g}")
    return state, placement.fetch(stack(logs)), lrs  # (steps, K) per field: one transfer each


def _save_epoch(writer: checkpoint.CheckpointWriter, m: Member, epoch: int, member_state,
                keep_epochs_from: int = 0) -> None:
    """The member's history and its last (and, if improved, best; if kept, epochs) checkpoint."""
    write_json(m.run_dir / "history.json", m.history)
    kinds = ["last"]
    if keep_epochs_from and epoch + 1 >= keep_epochs_from:
        kinds.append("epochs")
    if m.history["val_loss"][-1] < m.best_val:
        m.best_val = m.history["val_loss"][-1]
        kinds.append("best")
    # Observed before saving: a resumed run continues from the same schedule state.
    m.schedule.observe(epoch, m.history["val_loss"][-1])
    writer.save(m.run_dir, kinds, epoch, member_state, m.meta(epoch))


def _compile_evaluation(engine: Engine, params, test_x, val_idx, val_mask, probe_x, infer_idx) -> None:
    """Compile validation, diagnostics and the final prediction ahead of their first call, from
    shapes alone (the training step donates the state's buffers meanwhile). On a worker thread
    the compilations overlap the first epoch's training instead of adding to the run (≈ 9 s of
    a cold full-scale run on an H200); jit calls with the same shapes then reuse them."""
    def shape_of(a):  # a single-device sharding given explicitly would miss the call's cache entry
        sharding = a.sharding if isinstance(a.sharding, jax.sharding.NamedSharding) else None
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

    abstract = jax.tree.map(shape_of, params)
    engine.evaluate.lower(abstract, test_x, val_idx, val_mask).compile()
    engine.diagnostics.lower(abstract, probe_x).compile()
    engine.predict.lower(abstract, test_x, infer_idx).compile()
