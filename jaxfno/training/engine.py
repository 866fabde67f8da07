"""The pure, jit-compiled core of training: one step, validation, prediction, diagnostics.

Every function here works on ONE member (a seed, or an arm differing only in injected
hyperparameters) and is lifted over a leading member axis; K members train in one compiled
program. Two liftings give the same numbers: ``vmap`` (batched kernels; the choice on GPU) and
``unroll`` (the member computations written out one after another in the same program; the
choice on CPU, where XLA turns a vmapped convolution into a slow grouped one; measurements in
``docs/performance.md``).

The Flax NNX model is split once (``nnx.split``) outside and merged inside the traced functions.
Its parameters cross the jit boundary as plain nested dicts (``nnx.to_pure_dict``), which jax
flattens in C++ (an ``nnx.State`` is flattened variable by variable in Python, host time a fast
device waits for). Datasets are passed as arguments, never
closed over, so that they are not baked into the compiled program as constants.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxfno import physics
from jaxfno.config import PhysicsConfig
from jaxfno.execution import ExecutionConfig
from jaxfno.models import block_parameter_stats
from jaxfno.training.optim import Transforms

UPDATE_SCOPES = ("reachable", "full")


class TrainState(NamedTuple):
    params: Any
    clip_state: Any
    opt_state: Any


def _all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf is finite (max |x| per leaf: a sum could overflow)."""
    return jnp.all(jnp.stack([jnp.isfinite(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree)]))


MEMBER_AXES = ("vmap", "unroll")


def lift(fn: Callable, in_axes: tuple, strategy: str) -> Callable:
    """``fn`` over a leading member axis of the arguments whose ``in_axes`` entry is 0."""
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy != "unroll":
        raise ValueError(f"member axis strategy {strategy!r} is not one of {MEMBER_AXES}")

    def unrolled(*args):
        members = jax.tree.leaves([a for a, axis in zip(args, in_axes) if axis == 0])[0].shape[0]
        outs = [
            fn(*(jax.tree.map(lambda x: x[k], a) if axis == 0 else a for a, axis in zip(args, in_axes)))
            for k in range(members)
        ]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return unrolled


def shard_members(fn: Callable, in_axes: tuple, mesh: jax.sharding.Mesh | None) -> Callable:
    """Run the lifted ``fn`` on each device's own slice of the member axis (``jax.shard_map``);
    broadcast arguments are replicated. Without a mesh, ``fn`` itself."""
    if mesh is None:
        return fn
    members, replicated = jax.sharding.PartitionSpec("members"), jax.sharding.PartitionSpec()
    specs = tuple(members if axis == 0 else replicated for axis in in_axes)
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=members, check_vma=False)


def update_scope(transforms: Transforms, requested: str = "reachable") -> str:
    """Which entries the training step differentiates and updates. ``reachable``: only the
    leading block of each parameter that can receive a gradient (``reachable_shapes``), which
    gives the same training as ``full`` when the update rule is zero-gradient invariant
    (``Transforms``); other rules always run ``full``. At the default full-size model 7.8 M of
    the 17.2 M complex-counted weights are spectral entries no input reaches. The step's state
    then holds only the blocks (:meth:`Engine.step_layout`), rather than cutting them out of
    whole arrays inside the step (``results/cpu/update_scope_ab.json``).
    ``requested="full"`` (``ExecutionConfig.update``) forces the whole tensors."""
    if requested not in UPDATE_SCOPES:
        raise ValueError(f"update scope {requested!r} is not one of {UPDATE_SCOPES}")
    return requested if transforms.zero_gradient_invariant else "full"


def _leading_blocks(tree, shapes):
    """Each array's leading block of the shape given in ``shapes`` (``tree``'s structure with
    tuple leaves), after any leading member axes the shape does not name."""
    def block(x, shape):
        return x[(slice(None),) * (x.ndim - len(shape)) + tuple(map(slice, shape))]

    return jax.tree.map(block, tree, shapes)


def _embedded(template, blocks):
    """Copies of ``template``'s host arrays with their leading blocks replaced by ``blocks``'
    (same tree); where the shapes agree, ``blocks``' array itself."""
    def embed(whole, block):
        block = np.asarray(block)
        if whole.shape == block.shape:
            return block
        whole = np.array(whole)
        whole[tuple(map(slice, block.shape))] = block
        return whole

    return jax.tree.map(embed, template, blocks)


class Engine:
    """Compiled functions for one program (fixed architecture, physics and batch shapes).
    ``reachable_shapes``: the parameters' gradient-receiving blocks, for the ``reachable``
    :func:`update_scope`. ``execution`` chooses the member lifting, the update scope and the
    compiler options (the model's kernels are in ``graphdef``)."""

    def __init__(self, graphdef, rest, transforms: Transforms, physics_cfg: PhysicsConfig, probe,
                 stitch_fn: Callable[[jax.Array], jax.Array],
                 execution: ExecutionConfig = ExecutionConfig(),
                 mesh: jax.sharding.Mesh | None = None, reachable_shapes=None):
        self.graphdef, self.rest = graphdef, rest
        execution = execution.resolved()
        self.update_scope = "full" if reachable_shapes is None else update_scope(transforms, execution.update)
        self.reachable_shapes = reachable_shapes
        self.stitch_fn = stitch_fn
        self.transforms = transforms
        self.physics_cfg = physics_cfg
        self.probe = jnp.asarray(probe)
        self.member_axis = execution.member_axis
        options = execution.compiler_options()

        def compile_(fn, in_axes, **jit_kwargs):
            return jax.jit(shard_members(lift(fn, in_axes, self.member_axis), in_axes, mesh),
                           compiler_options=options, **jit_kwargs)

        self.train_step = compile_(self._step, (0, None, 0, 0), donate_argnums=(0,))
        self.evaluate = compile_(self._evaluate, (0, None, None, None))
        self.predict = compile_(self._predict, (0, None, None))
        self.diagnostics = compile_(self._diagnostics, (0, None))

    # --- state ---------------------------------------------------------------------------

    def init_state(self, params) -> TrainState:
        """State of one member (unstacked); ``params`` a plain nested dict."""
        return TrainState(
            params=params,
            clip_state=self.transforms.clip.init(params),
            opt_state=self.transforms.optimizer.init(params),
        )

    def step_layout(self, state: TrainState) -> TrainState:
        """A whole-array state (the checkpoint layout; host arrays, any leading member axes) in
        the layout the step trains: for the ``reachable`` scope, every parameter and each of
        its optimiser moments cut to its gradient-receiving block (views). The step and
        everything that only runs the model (validation, prediction, diagnostics) take this
        layout: the model reads no weight entry outside the blocks."""
        if self.update_scope == "full":
            return state
        shapes = self.reachable_shapes

        def cut(part, transform):
            return optax.tree_map_params(transform, _leading_blocks, part, shapes)

        return TrainState(_leading_blocks(state.params, shapes),
                          cut(state.clip_state, self.transforms.clip),
                          cut(state.opt_state, self.transforms.optimizer))

    def checkpoint_layout(self, template: TrainState, state: TrainState) -> TrainState:
        """Inverse of :meth:`step_layout` (host arrays): ``state``'s blocks written into copies
        of ``template``, a whole-array state of the same members whose entries outside the
        blocks are the ones the run started with (they never change: zero-gradient invariance)."""
        if self.update_scope == "full":
            return state
        return _embedded(template, state)

    def _model(self, params):
        return nnx.merge(self.graphdef, params, self.rest)

    def _loss(self, params, x, mask):
        out = self._model(params)(x[..., None])
        # Self-supervised: the measured amplitude is both the input and the target.
        return physics.physics_loss(out, x, mask, self.probe, self.physics_cfg), out

    # --- training ------------------------------------------------------------------------

    def _step(self, state: TrainState, train_x, idx, mask):
        """One step on a state in :meth:`step_layout`."""
        x = train_x[idx]
        params = state.params
        (loss, _), grads = jax.value_and_grad(self._loss, has_aux=True)(params, x, mask)
        grad_norm = optax.tree.norm(grads)
        clipped, clip_state = self.transforms.clip.update(grads, state.clip_state, params)
        n_valid = mask.sum()
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(state: TrainState) -> tuple[TrainState, jax.Array]:
            updates, opt_state = self.transforms.optimizer.update(clipped, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            # A finite gradient times a huge LR can still overflow the weights. Reported, not
            # undone: keeping the old state here too would copy the whole state (≈ 50 ms of the
            # full-size CPU step); the next step's loss is non-finite and leaves it as it is.
            return TrainState(params, clip_state, opt_state), _all_finite(params)

        # A member keeps its last finite state (the run stops with inspectable weights), and a
        # step with no valid sample (a stopped member's masked batches) leaves it unchanged:
        # Adam's momentum would otherwise move the weights on a zero gradient. A conditional,
        # not a select of new against old state: on the CPU (members unrolled) the select took
        # 110 ms of the 195 ms update of the full model; under vmap JAX turns it into the select.
        new_state, params_finite = jax.lax.cond(finite & (n_valid > 0), apply,
                                                lambda state: (state, jnp.array(True)), state)
        logs = {
            "loss": loss,
            "n_valid": n_valid,
            "grad_norm": grad_norm,
            "grad_norm_postclip": optax.tree.norm(clipped),
            "lr": state.opt_state.hyperparams["learning_rate"],
            "finite": finite & params_finite,
        }
        return new_state, logs

    # --- validation and prediction ---------------------------------------------------------

    def _evaluate(self, params, test_x, idx, mask):
        """Validation loss over the whole test split (batch-size-weighted mean of batch losses,
        as Lightning logs it), the same loss after fitting one global amplitude factor
        (SPEC §6.3's scale-free val_loss), and the stitched prediction of the first test image."""

        def body(_, batch):
            i, m = batch
            x = test_x[i]
            out = self._model(params)(x[..., None])
            amp = physics.model_amplitude(out, m, self.probe, self.physics_cfg)
            loss = physics.loss_terms(amp, x, m, self.physics_cfg.loss)
            return None, (loss, m.sum(), physics.object_from_output(out), amp)

        _, (losses, counts, patches, amps) = jax.lax.scan(body, None, (idx, mask))
        val_loss = jnp.sum(losses * counts) / jnp.sum(counts)
        scale_free = physics.scale_free_loss(amps, test_x[idx], mask, self.physics_cfg.loss)
        return val_loss, scale_free, self.stitch_fn(patches.reshape(-1, *patches.shape[2:]))

    def _predict(self, params, test_x, idx):
        """Stitched prediction of the first test image at the inference batch size."""
        def body(_, i):
            return None, physics.object_from_output(self._model(params)(test_x[i][..., None]))

        _, patches = jax.lax.scan(body, None, idx)
        return self.stitch_fn(patches.reshape(-1, *patches.shape[2:]))

    def _diagnostics(self, params, probe_x):
        """Per-block parameter statistics and activation RMS on a fixed probe batch."""
        _, activations = self._model(params)(probe_x[..., None], with_block_stats=True)
        blocks = block_parameter_stats(params)
        return {
            name: {**blocks.get(name, {}), **activations[name]} for name in activations
        }
