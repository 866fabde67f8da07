"""Where member-stacked arrays live (one device, or a 1-D mesh over devices and processes),
and stacking members' trees."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# Members' train states stacked by one program: op by op, each distinct leaf shape compiled its
# own stack.
stack_states = jax.jit(stack)


def member_slice(tree, k: int):
    """Member ``k``'s part of a member-stacked tree of host arrays (views)."""
    return jax.tree.map(lambda x: x[k], tree)


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
