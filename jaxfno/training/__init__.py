"""Training: K members of one program, epoch by epoch (``loop``), over a pure jitted engine
(``engine``), with Optax transforms (``optim``), Orbax checkpoints (``checkpoint``), the history
schema (``history``), batching (``batches``), device placement (``placement``) and program
building (``build``). Other packages use the names exported here."""

from jaxfno.training.batches import epoch_batches, sequential_batches
from jaxfno.training.build import (abstract_model, build_engine, init_params, initial_state, predictor,
                                   program_signature)
from jaxfno.training.history import Member, new_history
from jaxfno.training.loop import Program, Progress, train_members
from jaxfno.training.placement import MemberPlacement

__all__ = ["Member", "MemberPlacement", "Program", "Progress", "abstract_model", "build_engine",
           "epoch_batches", "init_params", "initial_state", "new_history", "predictor",
           "program_signature", "sequential_batches", "train_members"]
