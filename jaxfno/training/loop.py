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
     best; on accelerators written on a background thread), feed the plateau schedule, stop
     diverged members.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfno.config import ConfigError, ModelConfig, RunConfig
from jaxfno.data import Dataset, stitch_geometry
from jaxfno.evaluation import score, stitch
from jaxfno.evaluation.outcomes import amplitude_contrast, epoch_steps
from jaxfno.io import write_json
from jaxfno.models import build_model, reachable_shapes
from jaxfno.models.layers import execution_choices
from jaxfno.physics import forward_probe
from jaxfno.provenance import code_commit
from jaxfno.training import checkpoint
from jaxfno.training.engine import Engine, TrainState
from jaxfno.training.optim import LRSchedule, build_transforms, clip_threshold, with_hyperparam

# Fields that may differ between members of one compiled program.
_MEMBER_OPTIM_FIELDS = (
    "lr", "scheduler", "warmup_epochs", "lr_min_ratio",
    "plateau_factor", "plateau_patience", "plateau_min_lr", "grad_clip",
)


def program_signature(cfg: RunConfig) -> str:
    """Hash of everything that must be equal for runs to share one compiled program."""
    neutral = {name: getattr(RunConfig().optim, name) for name in _MEMBER_OPTIM_FIELDS}
    return cfg.replace(
        train=cfg.train.replace(seed=0), optim=cfg.optim.replace(**neutral)
    ).config_hash()


def new_history() -> dict:
    return {
        "train_loss": [], "val_loss": [], "lr_epoch": [],
        "lr": [], "step_loss": [], "grad_norm": [], "grad_norm_postclip": [],
        "val_amp_ssim": [], "val_loss_scale_free": [], "val_contrast": [],
        "epoch_seconds": [], "train_seconds": [],
        "nonfinite_step": None, "nonfinite_epoch": None, "steps_per_epoch": None, "epoch_steps": [],
        "diagnostics": {"clipped_fraction": [], "blocks": {}},
        # Wall time outside the epochs (seconds, the last process that worked on the run):
        # setup (data to device, init, resume), waiting for checkpoint writes at the end,
        # and the final evaluation (pipeline).
        "timing": {},
        # How the program ran (device kind and count, member lifting, Conv3x3 implementation).
        "execution": {},
    }


@dataclasses.dataclass
class Member:
    config: RunConfig
    run_dir: pathlib.Path
    history: dict = dataclasses.field(default_factory=new_history)
    schedule: LRSchedule | None = None
    best_val: float = math.inf

    def __post_init__(self):
        if self.schedule is None:
            self.schedule = LRSchedule(self.config.optim, self.config.train.epochs)

    @property
    def stopped(self) -> bool:
        return self.history["nonfinite_step"] is not None

    def meta(self, epoch: int) -> dict:
        return {
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "epoch": epoch,
            "val_loss": self.history["val_loss"][-1],
            "history": self.history,
            "schedule": self.schedule.to_dict(),
            "best_val": self.best_val,
        }


def epoch_batches(n: int, batch_size: int, drop_last: bool, seed: int, epoch: int):
    """Shuffled batch indices (steps, batch) and validity mask for one epoch. The short last
    batch is padded with index 0 and masked, so every step has the same shape (one compile)."""
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)
    steps = n // batch_size if drop_last else -(-n // batch_size)
    return _pad_batches(order[: steps * batch_size], steps, batch_size)


def sequential_batches(n: int, batch_size: int):
    return _pad_batches(np.arange(n), -(-n // batch_size), batch_size)


def _pad_batches(order: np.ndarray, steps: int, batch_size: int):
    idx = np.zeros(steps * batch_size, np.int32)
    mask = np.zeros(steps * batch_size, np.float32)
    idx[: order.size], mask[: order.size] = order, 1.0
    return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# Members' train states stacked by one program: op by op, each distinct leaf shape compiled its
# own stack (K=4 full-size members on the 2-core CPU: 4.7 s eager, 3.7 s jitted).
_stack_states = jax.jit(_stack)


def _member_slice(tree, k: int):
    """Member ``k``'s part of a member-stacked tree of host arrays (views)."""
    return jax.tree.map(lambda x: x[k], tree)


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


@dataclasses.dataclass(frozen=True)
class MemberPlacement:
    """Where member-stacked arrays live: with several devices (GPUs, forced CPU devices, or
    every process's devices after :func:`jaxfno.processes.initialize_processes`) and K
    divisible by their number, the member axis is sharded over a 1-D mesh and each device runs
    its own members (``jax.shard_map``); otherwise everything stays on the default device.

    With several processes, each one runs the same training loop on the same host data:
    :meth:`put` places it on the global mesh, each process computes its own devices' members,
    and :meth:`fetch` gathers every member to every process. So every process writes the same
    artifacts (atomically; they differ only in measured times)."""

    mesh: jax.sharding.Mesh | None

    @classmethod
    def for_members(cls, members: int) -> "MemberPlacement":
        devices = jax.devices()
        if len(devices) > 1 and members % len(devices) == 0:
            return cls(jax.sharding.Mesh(np.array(devices), ("members",)))
        return cls(None)

    @property
    def spans_processes(self) -> bool:
        """Whether this process holds only part of each member-stacked array (the same answer
        in every process)."""
        return self.mesh is not None and jax.process_count() > 1

    def put(self, tree):
        """``tree`` on the device(s), member axis sharded where there is a mesh."""
        if self.mesh is None:
            return jax.device_put(tree)
        sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("members"))
        return jax.device_put(tree, sharding)

    def fetch(self, tree):
        """``tree`` (device arrays, member axis first where stacked) as host arrays, all
        members; across processes a collective, so every process must call it."""
        if self.spans_processes:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.device_get(tree)


def build_engine(cfg: RunConfig, dataset: Dataset, graphdef, rest, member_axis: str | None = None,
                 mesh: jax.sharding.Mesh | None = None) -> tuple[Engine, jax.Array]:
    """The compiled functions of ``cfg``'s program and the test inputs on device."""
    stride = dataset.config.test_stride
    grid, border = stitch_geometry(stride, dataset.test.YY_full.shape[-1])
    engine = Engine(graphdef, rest, build_transforms(cfg.optim), cfg.physics, forward_probe(dataset),
                    stitch_fn=lambda patches: stitch(patches[: grid * grid], grid, border, stride),
                    member_axis=member_axis, mesh=mesh, reachable_shapes=reachable_shapes(cfg.model))
    return engine, jnp.asarray(dataset.test.diffraction)


def initial_state(engine: Engine, configs: Sequence[RunConfig]) -> TrainState:
    """Stacked state of K members, whole arrays on the host (the checkpoint layout; the step
    takes ``engine.step_layout`` of it): per-member initialisation and clip threshold. One
    compiled initialiser serves every member (its seed is an argument) and is kept by the
    persistent compilation cache: initialising op by op compiled each small op anew, 16 s per
    process for the full-size model on the CPU. On the CPU it is compiled at XLA's backend
    optimisation level 0: at the default level XLA:CPU spent 16–19 s optimising the threefry
    code of every parameter's draw, for a program that runs once per member (measured on 2
    cores: 3.2 s to compile at level 0, and it runs in 3.1 s instead of 0.8 s at full size, in
    milliseconds at the CI sizes; `tests/test_training.py` with a cold cache: 256 s instead of
    309 s). Some weights then differ from a level-2 build in their last bit.
    Parameters are plain nested dicts (see :class:`Engine`)."""
    model_cfg = configs[0].model
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    init = jax.jit(lambda key: engine.init_state(nnx.to_pure_dict(init_params(model_cfg, key)[1])),
                   compiler_options=options)
    state = _stack_states([init(jax.random.key(c.train.seed)) for c in configs])
    return with_clip_thresholds(jax.device_get(state), configs)


def with_clip_thresholds(state: TrainState, configs: Sequence[RunConfig]) -> TrainState:
    """``state`` (host arrays) with each member's clip threshold from its config: the config,
    not a checkpoint, decides it (a branch may change it; see ``pipeline.branch_run``)."""
    thresholds = np.array([clip_threshold(c.optim) for c in configs], np.float32)
    return state._replace(clip_state=jax.device_get(
        with_hyperparam(state.clip_state, "threshold", thresholds)))


def init_params(model_cfg: ModelConfig, key: jax.Array):
    """(graphdef, params, rest) of a new model; ``key`` is the member's
    ``jax.random.key(seed)``, from which every random stream of the model derives."""
    return nnx.split(build_model(model_cfg, nnx.Rngs(params=key)), nnx.Param, ...)


def train_members(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[pathlib.Path],
    dataset: Dataset,
    *,
    resume: bool = True,
    progress: Progress | None = None,
    on_epoch_end: Callable[[int, list[Member]], None] | None = None,
    member_axis: str | None = None,
) -> Program:
    """Train K members in one compiled program; see the module docstring."""
    setup_start = time.perf_counter()
    signatures = {program_signature(c) for c in configs}
    if len(signatures) != 1:
        raise ConfigError(
            "members of one program may differ only in seed, "
            f"{', '.join(_MEMBER_OPTIM_FIELDS)}; got {len(signatures)} incompatible configs"
        )
    cfg0 = configs[0]
    if cfg0.data != dataset.config:
        raise ConfigError(f"the runs' data config {cfg0.data.to_dict()} is not the dataset's "
                          f"{dataset.config.to_dict()}")
    progress = progress or Progress()
    members = [Member(c, pathlib.Path(d)) for c, d in zip(configs, run_dirs)]

    # --- data on device -----------------------------------------------------------------
    n_train = dataset.train.diffraction.shape[0]
    if cfg0.train.train_subset > n_train:
        raise ConfigError(f"train_subset={cfg0.train.train_subset} exceeds the dataset's {n_train} "
                          "training patterns (0 uses them all)")
    n_train = cfg0.train.train_subset or n_train
    if cfg0.train.drop_last and n_train < cfg0.train.batch_size:
        raise ConfigError(f"drop_last with {n_train} training patterns and batch_size "
                          f"{cfg0.train.batch_size}: not one full batch, so no step per epoch")
    train_x = jnp.asarray(dataset.train.diffraction[:n_train])
    ground_truth = dataset.test.ground_truth

    # --- model, optimiser, engine ---------------------------------------------------------
    graphdef, _, rest = nnx.eval_shape(lambda: init_params(cfg0.model, jax.random.key(0)))
    placement = MemberPlacement.for_members(len(configs))
    engine, test_x = build_engine(cfg0, dataset, graphdef, rest, member_axis, placement.mesh)
    val_idx, val_mask = sequential_batches(test_x.shape[0], cfg0.train.batch_size)
    probe_x = test_x[: cfg0.train.batch_size]  # fixed batch for activation diagnostics
    # Whole-array member states on the host: what checkpoints hold. Outside the blocks the
    # step trains (``engine.step_layout``) their entries keep these values all run.
    template = initial_state(engine, configs)

    # --- resume ---------------------------------------------------------------------------
    start_epoch = 0
    if resume:
        done = [checkpoint.latest_epoch(m.run_dir) for m in members]
        if all(e is not None for e in done):
            if len(set(done)) != 1:
                raise RuntimeError(f"cannot resume members stopped at different epochs: {done}")
            restored = []
            for k, m in enumerate(members):
                member_state, meta = checkpoint.restore(m.run_dir, "last", _member_slice(template, k))
                if meta["config_hash"] != m.config.config_hash():
                    raise RuntimeError(f"{m.run_dir}: checkpoint belongs to another config")
                m.history, m.best_val = meta["history"], meta["best_val"]
                m.schedule.load(meta["schedule"])
                restored.append(member_state)
            template = with_clip_thresholds(jax.tree.map(lambda *xs: np.stack(xs), *restored), configs)
            start_epoch = done[0] + 1
    state = jax.block_until_ready(placement.put(engine.step_layout(template)))
    for m in members:
        m.history.setdefault("timing", {})["setup_seconds"] = time.perf_counter() - setup_start
        m.history["execution"] = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
                                  "processes": jax.process_count(),
                                  "member_axis": engine.member_axis, "update": engine.update_scope,
                                  "commit": code_commit(),
                                  **execution_choices()}

    # --- epochs ---------------------------------------------------------------------------
    epochs = cfg0.train.trained_epochs
    infer_idx, _ = sequential_batches(test_x.shape[0], cfg0.train.infer_batch_size)
    with checkpoint.CheckpointWriter() as writer, ThreadPoolExecutor(1) as worker:
        evaluation_compiled = worker.submit(_compile_evaluation, engine, state.params, test_x, val_idx,
                                            val_mask, probe_x, infer_idx)
        for epoch in range(start_epoch, epochs):
            if all(m.stopped for m in members):
                break
            t0 = time.perf_counter()
            lrs = np.array([m.schedule.lr(epoch) for m in members], np.float32)
            state = state._replace(opt_state=with_hyperparam(state.opt_state, "learning_rate", lrs))
            batches = [epoch_batches(n_train, c.train.batch_size, c.train.drop_last, c.train.seed, epoch)
                       for c in configs]
            idx = np.stack([b[0] for b in batches], axis=1)  # (steps, K, B)
            mask = np.stack([b[1] for b in batches], axis=1)
            # A stopped member sharing the program keeps its state: with no valid sample the
            # step leaves it unchanged, so its prediction uses the weights of its last checkpoint.
            mask[:, [k for k, m in enumerate(members) if m.stopped]] = 0.0
            logs = []
            for s in range(idx.shape[0]):
                state, step_logs = engine.train_step(state, train_x, placement.put(idx[s]),
                                                     placement.put(mask[s]))
                logs.append(step_logs)
                # Reading a member's loss off the device: not where processes hold only their own.
                if progress.enabled and not placement.spans_processes and s % 10 == 0:
                    progress.update(
                        f"epoch {epoch + 1}/{epochs} step {s + 1}/{idx.shape[0]} "
                        f"loss {float(step_logs['loss'][0]):.4f} grad {float(step_logs['grad_norm'][0]):.3g} "
                        f"lr {float(step_logs['lr'][0]):.3g}"
                    )
            logs = placement.fetch(_stack(logs))  # (steps, K) per field: one transfer each
            train_seconds = time.perf_counter() - t0
            evaluation_compiled.result()  # re-raises a compilation error
            val_loss, scale_free, stitched = engine.evaluate(state.params, test_x, val_idx, val_mask)
            diagnostics = placement.fetch(engine.diagnostics(state.params, probe_x))
            val_loss, scale_free, stitched = placement.fetch((val_loss, scale_free, stitched))
            seconds = time.perf_counter() - t0

            bookkeeping_start = time.perf_counter()
            # One transfer; each member's checkpoint is a view of the whole-array snapshot.
            host_state = engine.checkpoint_layout(template, placement.fetch(state))
            for k, m in enumerate(members):
                if m.stopped:
                    continue
                _record_epoch(m, k, epoch, logs, (float(val_loss[k]), float(scale_free[k])), float(lrs[k]),
                              diagnostics, stitched[k], ground_truth, (seconds, train_seconds))
                write_json(m.run_dir / "history.json", m.history)
                kinds = ["last"]
                if m.history["val_loss"][-1] < m.best_val:
                    m.best_val = m.history["val_loss"][-1]
                    kinds.append("best")
                # Observed before saving: a resumed run continues from the same schedule state.
                m.schedule.observe(epoch, m.history["val_loss"][-1])
                writer.save(m.run_dir, kinds, epoch, _member_slice(host_state, k), m.meta(epoch))
            bookkeeping = time.perf_counter() - bookkeeping_start  # history, checkpoints, schedule
            for m in members:
                timing = m.history["timing"]
                timing["bookkeeping_seconds"] = timing.get("bookkeeping_seconds", 0.0) + bookkeeping
            progress.update(
                f"epoch {epoch + 1}/{epochs} train {members[0].history['train_loss'][-1]:.4f} "
                f"val {members[0].history['val_loss'][-1]:.4f} ({seconds:.1f} s)"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, members)
        wait_start = time.perf_counter()
    for m in members:
        m.history["timing"]["checkpoint_wait_seconds"] = time.perf_counter() - wait_start
    progress.close()
    return Program(engine, state, members, test_x, infer_idx, placement)


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


def _record_epoch(m: Member, k: int, epoch: int, logs: dict, val_losses: tuple[float, float], lr: float,
                  diagnostics: dict, stitched: np.ndarray, ground_truth,
                  seconds: tuple[float, float]) -> None:
    h = m.history
    loss = logs["loss"][:, k].astype(np.float64)
    steps = loss.size
    n_valid = logs["n_valid"][:, k].astype(np.float64)
    finite = logs["finite"][:, k].astype(bool)
    pre = logs["grad_norm"][:, k].astype(np.float64)
    post = logs["grad_norm_postclip"][:, k].astype(np.float64)
    h["epoch_steps"] = epoch_steps(h) + [steps]
    h["steps_per_epoch"] = steps
    h["lr"] += logs["lr"][:, k].astype(np.float64).tolist()
    h["step_loss"] += loss.tolist()
    h["grad_norm"] += pre.tolist()
    h["grad_norm_postclip"] += post.tolist()
    if not finite.all():  # a global step index: a branch's epochs may differ in step count
        h["nonfinite_step"] = len(h["step_loss"]) - steps + int(np.argmin(finite))
        h["nonfinite_epoch"] = epoch
    ok = finite
    h["train_loss"].append(float(np.sum(loss[ok] * n_valid[ok]) / max(np.sum(n_valid[ok]), 1)))
    h["val_loss"].append(val_losses[0])
    # Histories written before 2026-12-03 lack these two (a resumed one has them from here on).
    h.setdefault("val_loss_scale_free", []).append(val_losses[1])
    h.setdefault("val_contrast", []).append(amplitude_contrast(stitched, ground_truth))
    h["lr_epoch"].append(lr)
    h["epoch_seconds"].append(seconds[0])  # the whole epoch, shared by the program's members
    h["train_seconds"].append(seconds[1])  # its training steps only
    h["val_amp_ssim"].append(score(stitched, ground_truth)["ssim"][0])
    # A step counts as clipped when clipping changed its gradient (any algorithm).
    h["diagnostics"]["clipped_fraction"].append(float(np.mean(post < pre * (1 - 1e-6))))
    for block, stats in diagnostics.items():
        per_block = h["diagnostics"]["blocks"].setdefault(block, {})
        for name, value in stats.items():
            per_block.setdefault(name, []).append(None if value is None else float(value[k]))
