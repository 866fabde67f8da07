"""Look inside a run's Orbax checkpoint: tree, shapes, metadata, per-block λ/γ statistics, and
the metrics recomputed from the stored weights (``jaxfno inspect``)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxfno.config import RunConfig
from jaxfno.data import ensure_dataset
from jaxfno.evaluation import score
from jaxfno.io import cache_root
from jaxfno.models import block_parameter_stats
from jaxfno.training import checkpoint
from jaxfno.training import abstract_model, predictor


def resolve(path: pathlib.Path) -> tuple[pathlib.Path, str | None, int | None]:
    """(run directory, checkpoint kind or None where the path names none, step or None for the
    newest) from a run dir, its ``checkpoints/<kind>`` folder, or one step of it
    (``checkpoints/<kind>/<step>``)."""
    path = pathlib.Path(path)
    if path.name.isdigit() and path.parent.name in checkpoint.KINDS and path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent, path.parent.name, int(path.name)
    if path.name in checkpoint.KINDS and path.parent.name == "checkpoints":
        return path.parent.parent, path.name, None
    if (path / "checkpoints").is_dir():
        return path, None, None
    raise FileNotFoundError(f"{path}: neither a run directory nor a checkpoints/<kind>[/<step>] folder "
                            f"(kinds: {', '.join(checkpoint.KINDS)})")


def load_params(run_dir: pathlib.Path, kind: str | None, step: int | None = None):
    """(config, meta, graphdef, params as nnx.State, rest) of a checkpoint (kind None: last)."""
    plain, meta = checkpoint.restore(run_dir, kind or "last", step=step)
    cfg = RunConfig.from_dict(meta["config"])
    graphdef, params, rest = abstract_model(cfg.model)
    params = checkpoint.from_plain(params, plain["params"])
    return cfg, meta, graphdef, params, rest


def describe_checkpoint(path: pathlib.Path) -> str:
    run_dir, kind, step = resolve(path)
    kind = kind or "last"
    plain, meta = checkpoint.restore(run_dir, kind, step=step)
    lines = [f"checkpoint: {run_dir / 'checkpoints' / kind / str(meta['epoch'])} (after epoch "
             f"{meta['epoch'] + 1}, val_loss {meta['val_loss']:.6g}, config {meta['config_hash']})"]
    leaves = jax.tree_util.tree_flatten_with_path(plain)[0]
    total = 0
    for key_path, leaf in leaves:
        total += leaf.size
        name = "/".join(str(getattr(k, "key", k)) for k in key_path)
        lines.append(f"  {name:<70} {str(leaf.shape):<20} {leaf.dtype}")
    lines.append(f"  {len(leaves)} arrays, {total:,} scalars")
    _, _, _, params, _ = load_params(run_dir, kind, step)
    for block, stats in block_parameter_stats(params).items():
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in stats.items() if v is not None)
        lines.append(f"  block {block}: {values or 'no λ/γ (PtychoBlock)'}")
    return "\n".join(lines)


def evaluate_checkpoint(path: pathlib.Path) -> dict:
    """Metrics of the checkpoint's weights on the test split, as ``metrics.json`` computes them."""
    cfg, _, _, params, _ = load_params(*resolve(path))
    dataset = ensure_dataset(cfg.data, cache_root() / "datasets")
    stitched = predictor(cfg, dataset)(jax.tree.map(lambda x: np.asarray(x)[None], params))[0]
    return score(stitched, dataset.test.ground_truth)
