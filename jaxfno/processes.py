"""Multi-process jobs (several hosts, or several processes on one): joining them, and the file
work that one process must finish before the others look.

Every process runs the same command on the same data and sees the same files (a shared
filesystem, or identical copies); :class:`jaxfno.training.placement.MemberPlacement` spreads the
members over all processes' devices and gathers every member's results to every process.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax

from jaxfno.config import ConfigError

T = TypeVar("T")


def initialize_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process JAX job (``jax.distributed.initialize``): afterwards
    ``jax.devices()`` lists every process's devices. Call it before anything else touches a
    device. CPU devices exchange data over gloo (the setting concerns the CPU backend only)."""
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"process id {process_id} is not in 0…{num_processes - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def primary_first(fn: Callable[[], T]) -> T:
    """``fn()`` in process 0, then, after a barrier, in every other process (a lone process just
    calls it). For file work whose outcome depends on what is already on disk (building the
    dataset cache, binding run directories): the other processes then find process 0's
    finished files instead of its half-written ones. An error in process 0 is raised after the
    barrier, so the others are not left waiting."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    primary = jax.process_index() == 0
    result, error = None, None
    if primary:
        try:
            result = fn()
        except Exception as exc:  # re-raised below, once the others may go on
            error = exc
    multihost_utils.sync_global_devices(f"jaxfno primary_first {getattr(fn, '__name__', fn)}")
    if error is not None:
        raise error
    return result if primary else fn()
