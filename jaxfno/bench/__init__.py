"""Every benchmark behind ``jaxfno bench``: measured side by side in one process, printed as a table
and returned as JSON-ready dicts. Never used as timed unit tests.

* ``step``: one training step of the real engine (vmapped over one member, jit-compiled; compile
  timed separately) against a PyTorch eager twin of the same step (same weights, same batch,
  same physics loss, Adam), with the ratio and both first-step losses (same numerics). The two
  run in alternating blocks of consecutive steps (:func:`jaxfno.bench.timing.alternating_blocks`).
* ``data``: building the 1+1-image dataset and one full evaluation (predict 1089 patches at
  the inference batch, stitch, score).
* ``model``: generator forward and forward+backward.
* ``layers``: forward and forward+backward of every layer of the generator, timed alone
  (``format_layers`` prints the table), against the whole generator.
* ``study``: seed-runs per hour at a study scale, K seeds in one program against K sequential
  runs and the PyTorch twin.
* ``seeds``: K members in one program against K sequential single-member steps.
* ``profile``: a ``jax.profiler`` trace of K members' steps, summarised per device timeline
  (busy time per step against wall time, the most expensive kernels).
* ``loop``: the training loop's steps per second (logging, LR injection, batching included)
  against the bare jitted step on the same shapes.
* ``compile``: first-step time of a cold process against a second process that finds the
  persistent compilation cache filled.
Every step benchmark also reports XLA's FLOP count of the step and the achieved FLOP/s, and its
fraction of the device's nominal float32 peak where that is known.
"""


from jaxfno.bench.data import bench_build
from jaxfno.bench.model import bench_layers, bench_model, format_layers
from jaxfno.bench.profile import bench_profile, format_profile, summarise_trace
from jaxfno.bench.step import (bench_compile_cache, bench_data_and_eval, bench_loop_overhead, bench_seeds,
                               bench_step)
from jaxfno.bench.study import bench_study
from jaxfno.bench.timing import device_name, format_table, median_seconds

__all__ = ["bench_build", "bench_compile_cache", "bench_data_and_eval", "bench_layers", "bench_loop_overhead",
           "bench_model", "bench_profile", "bench_seeds", "bench_step", "bench_study", "device_name",
           "format_layers", "format_profile", "format_table", "median_seconds", "summarise_trace"]
