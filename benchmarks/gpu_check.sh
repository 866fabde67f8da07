#!/usr/bin/env bash
# One-call GPU check (issue "Performance and scale-out"): environment report, the step benchmark
# against the PyTorch eager twin, kernel profiles of one and of K members' steps, one full-scale
# arm with one seed (wall time including compile), seed throughput with each Conv3x3
# implementation, the same arm with 4 seeds in one program (with the implementation that
# stepped K members faster), a resumable chunk of the full-scale factorial and the test suite on the GPU (with deterministic GPU reductions,
# which its same-seed test needs), most important first. Each stage has its own time limit and
# the script goes on after a failure. Writes OUT/*.json, OUT/*.txt and OUT/summary.md naming the
# device. On an H200 (results/gpu*/README.md) all stages together take longer than one 10-minute
# device call: GPU_CHECK_STAGES="env bench_step ..." runs a subset, e.g. GPU_CHECK_STAGES=factorial
# for one more chunk of the factorial.
#
#   benchmarks/gpu_check.sh [--dry-run] [OUT]     (default OUT: results/gpu)
#
# --dry-run runs the stages at toy size on whatever device JAX sees (CI runs it on the CPU); it
# skips the test suite, which CI runs anyway, and the stages that repeat another with other
# arguments (the K-member profile, im2col seed throughput, the multi-seed arm). With
# GPU_CHECK_ARCHIVE=DIR set, OUT and the factorial's runs (without checkpoints and raw traces) are
# packed after every stage into DIR/gpu.tar.xz.part_aa, _ab, ... of at most 15 MB each (the device
# tool hands back files of up to 16 MiB; `cat DIR/gpu.tar.xz.part_* | tar xJf -` unpacks), so that
# a call cut short still hands back what it finished. The factorial stage on a GPU requires it
# (GPU_CHECK_ARCHIVE=none: keep the runs on the machine).
# CONV3X3 (xla|im2col) overrides the 3×3 convolution of the multi-seed arm and the factorial,
# which is otherwise the one that stepped K members faster (--set execution.conv3x3=...).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-results/gpu}
export JAXFNO_CACHE=${JAXFNO_CACHE:-$PWD/.cache}
# A stage stopped at its limit keeps the progress it printed (Python buffers it otherwise).
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ALL_STAGES="env bench_step profile_one profile_members bench_seeds bench_seeds_im2col arm_1seed arm_4seeds factorial pytest"
# The dry run (CI) leaves out the stages that repeat another one with other arguments.
[ $DRY -eq 0 ] || ALL_STAGES="env bench_step profile_one arm_1seed bench_seeds factorial"
STAGES=" ${GPU_CHECK_STAGES:-$ALL_STAGES} "
# Not passed on to the stages: the test suite's own dry run of this script once packed its toy
# output over a GPU run's archive.
ARCHIVE=${GPU_CHECK_ARCHIVE:-}
unset GPU_CHECK_ARCHIVE GPU_CHECK_STAGES
# A device tool hands back a few files, not the factorial's run folders: a GPU session once lost
# twelve finished runs that way (results/stage_a_full_asrun/h200_report_only).
if [ $DRY -eq 0 ] && [[ $STAGES == *" factorial "* ]] && [ -z "$ARCHIVE" ]; then
  echo "gpu_check.sh: the factorial stage needs GPU_CHECK_ARCHIVE=DIR (its runs come back only packed there)," \
    "or GPU_CHECK_ARCHIVE=none to leave them on the machine" >&2
  exit 2
fi
read -ra FACTORIAL_SETS <<< "${FACTORIAL_SET:-}"  # split on blanks, never globbed
if [ ${#FACTORIAL_SETS[@]} -gt 0 ] && [[ $STAGES == *" factorial "* ]] && [ -z "${FACTORIAL_DIR:-}" ]; then
  echo "gpu_check.sh: FACTORIAL_SET changes the runs' config: name a folder of their own with FACTORIAL_DIR" >&2
  exit 2
fi
[ "$ARCHIVE" != none ] || ARCHIVE=
mkdir -p "$OUT"
status=0
pack() {  # written aside and renamed, so a call cut short mid-write still leaves the last whole archive
  [ -n "$ARCHIVE" ] || return 0
  local dirs=("$OUT") tmp="$ARCHIVE.writing"
  [[ -z "${FACTORIAL_DIR:-}" || "$(realpath -m "$FACTORIAL_DIR")/" == "$(realpath -m "$OUT")/"* ]] \
    || [ ! -d "$FACTORIAL_DIR" ] || dirs+=("$FACTORIAL_DIR")
  rm -rf "$tmp" && mkdir -p "$tmp" \
    && tar cJf - --exclude=checkpoints --exclude='*.xplane.pb' --exclude='.*.lock' "${dirs[@]}" 2> /dev/null \
    | split -b 15M - "$tmp/gpu.tar.xz.part_" && rm -rf "$ARCHIVE" && mv "$tmp" "$ARCHIVE"
}
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to OUT/NAME.txt, keep going
  local name=$1 limit=$2; shift 2
  [[ $STAGES == *" $name "* ]] || return 0
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/stages.txt"
  [ $rc -eq 0 ] || status=1
  pack
}

if [ $DRY -eq 0 ]; then
  # The GPU image has every dependency and no network: run the project from this source tree.
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  SIZE=(); MEMBERS=8; REPEATS=20; SCALE=full; SEEDS=4; ARM=stable
else
  SIZE=(--width 4 --blocks 2 --modes 4); MEMBERS=2; REPEATS=2; SCALE=smoke; SEEDS=1; ARM=control
fi
: > "$OUT/stages.txt"
stage env 30 "$PY" -c "
import json, platform, jax, flax, optax
d = jax.devices()[0]
print(json.dumps({'device': f'{d.platform}:{getattr(d, \"device_kind\", \"\")}', 'devices': len(jax.devices()),
    'python': platform.python_version(), 'jax': jax.__version__, 'flax': flax.__version__,
    'optax': optax.__version__}, indent=2))"
[ -f "$OUT/env.txt" ] && cp "$OUT/env.txt" "$OUT/env.json"
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
stage bench_step 75 "$PY" -m jaxfno bench step "${SIZE[@]}" --repeats $REPEATS --json-out "$OUT/bench_step.json"
for run in one:1 members:$MEMBERS; do
  stage profile_${run%:*} 60 "$PY" -m jaxfno bench profile "${SIZE[@]}" --members ${run#*:} --repeats 5 \
    --trace-dir "$OUT/trace_${run%:*}" --json-out "$OUT/profile_${run%:*}.json"
done
stage arm_1seed 150 "$PY" -m jaxfno study stage-a --scale $SCALE --seeds 1 --arms $ARM --out "$OUT/arm_1seed"
stage bench_seeds 60 "$PY" -m jaxfno bench seeds "${SIZE[@]}" --members $MEMBERS --repeats $REPEATS \
  --json-out "$OUT/bench_seeds.json"
stage bench_seeds_im2col 60 "$PY" -m jaxfno bench seeds "${SIZE[@]}" --set execution.conv3x3=im2col \
  --members $MEMBERS --repeats $REPEATS --json-out "$OUT/bench_seeds_im2col.json"
# The multi-seed arm runs with the Conv3x3 implementation that stepped K members faster above.
MULTI_CONV=$("$PY" - "$OUT" <<'PY'
import json, pathlib, sys
runs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("bench_seeds*.json")]
print(min(runs, key=lambda r: r[f"step_s_k{r['members']}"])["execution"]["conv3x3"] if runs else "xla")
PY
)
[ "$SEEDS" -eq 1 ] || stage arm_${SEEDS}seeds 240 "$PY" -m jaxfno study stage-a --scale $SCALE --seeds $SEEDS \
  --arms $ARM --set execution.conv3x3=${CONV3X3:-$MULTI_CONV} --out "$OUT/arm_${SEEDS}seeds"
# The full-scale factorial (SPEC §7: six arms × asrun, fixed × 8 seeds) in chunks: the stage
# stops after at most FACTORIAL_SECONDS (default 480) and the next call resumes it from its
# checkpoints in $FACTORIAL_DIR (an ignored path of the tree, kept while the machine stays
# warm; default runs/gpu_factorial), so repeated calls add finished runs. The study's report of
# the runs finished so far is written to OUT/factorial each time.
FACTORIAL_DIR=${FACTORIAL_DIR:-runs/gpu_factorial}
FACTORIAL_SECONDS=${FACTORIAL_SECONDS:-480}
# FACTORIAL_ARMS, FACTORIAL_CONDITIONS and FACTORIAL_SEEDS pick a part of it (the cells that decide
# the answer first: runs differing only in seed, LR, schedule or clip train as one program, so a
# part must finish inside one chunk). The dry run: one smoke run of `stable` in asrun.
if [ $DRY -eq 0 ]; then
  FACTORIAL=(--conditions ${FACTORIAL_CONDITIONS:-asrun fixed} --seeds ${FACTORIAL_SEEDS:-8})
  [ -z "${FACTORIAL_ARMS:-}" ] || FACTORIAL+=(--arms $FACTORIAL_ARMS)
else
  FACTORIAL=(--conditions asrun --seeds 1 --arms stable)
fi
FACTORIAL+=(--set execution.conv3x3=${CONV3X3:-$MULTI_CONV})
# FACTORIAL_SET: config changes for every run of the chunk, space-separated, e.g. "train.epochs=40"
# (runs trained beyond the recipe), after the ones above so that they win. Another config needs a
# folder of its own (results/stage_a_full_asrun/longer_<machine>): FACTORIAL_DIR must name it.
for item in "${FACTORIAL_SETS[@]}"; do FACTORIAL+=(--set "$item"); done
# Deterministic GPU reductions: a rerun of a seed on the same machine gives the same numbers.
stage factorial "$FACTORIAL_SECONDS" env XLA_FLAGS="--xla_gpu_deterministic_ops=true ${XLA_FLAGS:-}" \
  "$PY" -m jaxfno study stage-a --scale $SCALE "${FACTORIAL[@]}" --out "$FACTORIAL_DIR"
if [[ $STAGES == *" factorial "* ]] && compgen -G "$FACTORIAL_DIR/*/*/seed*/verdict.json" > /dev/null; then
  "$PY" -m jaxfno study report "$FACTORIAL_DIR" --scale $SCALE > "$OUT/factorial_report.txt" 2>&1
  mkdir -p "$OUT/factorial" && cp -r "$FACTORIAL_DIR/report/." "$OUT/factorial/"
  "$PY" -m jaxfno outcomes "$FACTORIAL_DIR" --relative-to "$FACTORIAL_DIR" --out "$OUT/factorial/outcomes.md" > /dev/null
fi
# The suite in 12 processes; each takes GPU memory as it needs it instead of 75 % up front.
[ $DRY -eq 1 ] || stage pytest 120 env XLA_PYTHON_CLIENT_PREALLOCATE=false \
  XLA_FLAGS="--xla_gpu_deterministic_ops=true ${XLA_FLAGS:-}" \
  "$PY" -m pytest -m "not slow" -v -n 12 -p no:cacheprovider tests

"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
env, step = load("env.json"), load("bench_step.json")
lines = [f"# GPU check on {env['device'] if env else 'unknown device'}", ""]
lines += ["## Stages", "", "```", (out / "stages.txt").read_text().strip(), "```", ""]
if step:
    lines.append(f"- step: JAX {step['jax_step_s']:.4f} s (compile {step['jax_compile_s']:.1f} s)"
                 + (f", PyTorch eager ({step.get('torch_device')}) {step['torch_step_s']:.4f} s, "
                    f"speedup {step['speedup_vs_torch']:.2f}×" if 'torch_step_s' in step else ""))
for name in ("bench_seeds.json", "bench_seeds_im2col.json"):
    if seeds := load(name):
        k = seeds["members"]
        lines.append(f"- {k} members in one program: {seeds[f'step_s_k{k}']:.4f} s per step = "
                     f"{seeds['together_over_one']:.2f}× one member ({seeds['step_s_k1']:.4f} s; "
                     f"{seeds['member_axis']}, conv3x3={seeds['execution']['conv3x3']})")
for profile in sorted(out.glob("profile_*.json")):
    p = json.loads(profile.read_text())
    busy = {line: info["busy_s_per_step"] for line, info in p["timelines"].items()}
    lines.append(f"- profile, {p['members']} member(s): wall {1e3 * p['wall_s_per_step']:.2f} ms per step; "
                 + (", ".join(f"{line} busy {1e3 * s:.2f} ms" for line, s in busy.items()) or "no device timelines"))
for run in sorted(p for p in out.glob("arm_*") if p.is_dir()):
    lines += ["", f"## {run.name}", ""]
    for history_file in sorted(run.glob("*/*/seed*/history.json")):  # where the wall time went
        h = json.loads(history_file.read_text())
        epochs, timing = h["epoch_seconds"], h.get("timing", {})
        lines.append(f"- {history_file.relative_to(run).parent}: "
                     f"{len(epochs)} epochs; setup {timing.get('setup_seconds', float('nan')):.1f} s, "
                     f"epoch 1 {epochs[0]:.1f} s, later epochs {sum(epochs[1:]) / max(len(epochs) - 1, 1):.2f} s each, "
                     f"per-epoch bookkeeping {timing.get('bookkeeping_seconds', float('nan')):.1f} s in all, "
                     f"checkpoint wait {timing.get('checkpoint_wait_seconds', float('nan')):.1f} s, "
                     f"final prediction {timing.get('final_prediction_seconds', float('nan')):.1f} s")
    summary = run / "report" / "summary.md"
    if summary.exists():
        lines += ["", summary.read_text()]
factorial = out / "factorial" / "summary.md"
if factorial.exists():
    lines += ["", "## factorial (the runs finished so far)", "", factorial.read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
# Once more at the end: the factorial's report and the summary come after the last stage.
pack
exit $status
