"""CI sees learning: the real training step makes a small generator's loss fall at least 5×.

Deleting the optimiser update (or breaking the gradient, the loss or the model) fails it."""

from __future__ import annotations

import jax
import numpy as np

from jaxfno.config import ModelConfig, RunConfig
from jaxfno.training import abstract_model, build_engine, initial_state

STEPS = 240


def test_small_stable_hybrid_learns(grid_lines_dataset):
    cfg = RunConfig(model=ModelConfig(arch="stable_hybrid", width=8, blocks=2, modes=4))
    graphdef, _, rest = abstract_model(cfg.model)
    engine, _ = build_engine(cfg, grid_lines_dataset, graphdef, rest)
    state = jax.device_put(engine.step_layout(initial_state(engine, [cfg])))
    train_x = jax.numpy.asarray(grid_lines_dataset.train.diffraction[:64])
    mask = np.ones((1, 16), np.float32)
    losses = []
    for step in range(STEPS):  # four batches of 16 in turn
        idx = (np.arange(16, dtype=np.int32) + 16 * (step % 4))[None]
        state, logs = engine.train_step(state, train_x, idx, mask)
        losses.append(float(logs["loss"][0]))
    first, last = np.median(losses[:4]), np.median(losses[-20:])
    assert np.all(np.isfinite(losses))
    assert last <= first / 5, f"loss {first:.4f} → {last:.4f} in {STEPS} steps: fell only {first / last:.2f}×"
