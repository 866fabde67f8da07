"""Batch indices of an epoch: a seeded permutation per (seed, epoch), the short last batch
padded and masked so that every step has one shape (one compile)."""

from __future__ import annotations

import numpy as np


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
