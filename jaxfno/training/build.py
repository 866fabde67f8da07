"""Building a program: the compiled engine of a config, the members' initial state, and
predicting from a restored state (the one sequence that training, ``inspect`` and the
benchmarks share)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfno.config import ModelConfig, RunConfig
from jaxfno.data import Dataset, stitch_geometry
from jaxfno.evaluation import stitch
from jaxfno.execution import ExecutionConfig
from jaxfno.models import build_model, reachable_shapes
from jaxfno.physics import forward_probe
from jaxfno.training.batches import sequential_batches
from jaxfno.training.engine import Engine, TrainState
from jaxfno.training.optim import build_transforms, clip_threshold, with_hyperparam
from jaxfno.training.placement import stack_states

# Fields that may differ between members of one compiled program.
MEMBER_OPTIM_FIELDS = (
    "lr", "scheduler", "warmup_epochs", "lr_min_ratio",
    "plateau_factor", "plateau_patience", "plateau_min_lr", "grad_clip",
)


def program_signature(cfg: RunConfig) -> str:
    """Hash of everything that must be equal for runs to share one compiled program."""
    neutral = {name: getattr(RunConfig().optim, name) for name in MEMBER_OPTIM_FIELDS}
    return cfg.replace(
        train=cfg.train.replace(seed=0), optim=cfg.optim.replace(**neutral)
    ).config_hash()


def build_engine(cfg: RunConfig, dataset: Dataset, graphdef, rest,
                 execution: ExecutionConfig = ExecutionConfig(),
                 mesh: jax.sharding.Mesh | None = None) -> tuple[Engine, jax.Array]:
    """The compiled functions of ``cfg``'s program and the test inputs on device."""
    stride = dataset.config.test_stride
    grid, border = stitch_geometry(stride, dataset.test.YY_full.shape[-1])
    engine = Engine(graphdef, rest, build_transforms(cfg.optim), cfg.physics, forward_probe(dataset),
                    stitch_fn=lambda patches: stitch(patches[: grid * grid], grid, border, stride),
                    execution=execution, mesh=mesh, reachable_shapes=reachable_shapes(cfg.model))
    return engine, jnp.asarray(dataset.test.diffraction)


def initial_state(engine: Engine, configs: Sequence[RunConfig]) -> TrainState:
    """Stacked state of K members, whole arrays on the host (the checkpoint layout; the step
    takes ``engine.step_layout`` of it): per-member initialisation and clip threshold. One
    compiled initialiser serves every member (its seed is an argument) and is kept by the
    persistent compilation cache (op by op, each small op compiled anew). On the CPU it is
    compiled at XLA's backend optimisation level 0: the default level spends far longer
    optimising the threefry code of every parameter's draw than the program, run once per
    member, takes. Some weights then differ from a level-2 build in their last bit.
    Parameters are plain nested dicts (see :class:`Engine`)."""
    model_cfg = configs[0].model
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    init = jax.jit(lambda key: engine.init_state(nnx.to_pure_dict(init_params(model_cfg, key)[1])),
                   compiler_options=options)
    state = stack_states([init(jax.random.key(c.train.seed)) for c in configs])
    return with_clip_thresholds(jax.device_get(state), configs)


def with_clip_thresholds(state: TrainState, configs: Sequence[RunConfig]) -> TrainState:
    """``state`` (host arrays) with each member's clip threshold from its config: the config,
    not a checkpoint, decides it (a branch may change it; see ``pipeline.branch_run``)."""
    thresholds = np.array([clip_threshold(c.optim) for c in configs], np.float32)
    return state._replace(clip_state=jax.device_get(
        with_hyperparam(state.clip_state, "threshold", thresholds)))


def init_params(model_cfg: ModelConfig, key: jax.Array, execution: ExecutionConfig = ExecutionConfig()):
    """(graphdef, params, rest) of a new model; ``key`` is the member's
    ``jax.random.key(seed)``, from which every random stream of the model derives."""
    return nnx.split(build_model(model_cfg, nnx.Rngs(params=key), execution=execution), nnx.Param, ...)


def abstract_model(model_cfg: ModelConfig, execution: ExecutionConfig = ExecutionConfig()):
    """(graphdef, params as ShapeDtypeStructs, rest): the model's structure, no memory."""
    return nnx.eval_shape(lambda: init_params(model_cfg, jax.random.key(0), execution))


def predictor(cfg: RunConfig, dataset: Dataset, execution: ExecutionConfig = ExecutionConfig()):
    """``predict(params) → stitched amplitude-phase object of the first test image`` for
    member-stacked params (an ``nnx.State`` or plain dicts with a leading member axis), at the
    config's inference batch size; one per member, host arrays."""
    graphdef, _, rest = abstract_model(cfg.model, execution)
    engine, test_x = build_engine(cfg, dataset, graphdef, rest, execution)
    idx, _ = sequential_batches(test_x.shape[0], cfg.train.infer_batch_size)
    return lambda params: np.asarray(engine.predict(params, test_x, idx))
