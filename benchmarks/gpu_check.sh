#!/usr/bin/env bash
# One-call GPU check (issue "Performance and scale-out"): environment report, the test suite on
# the GPU, step / seed-throughput / compile-cache benchmarks and one full-scale arm with 4 seeds.
# Writes OUT/*.json, OUT/*.txt and OUT/summary.md naming the device. Budget: under 8 minutes.
#
#   benchmarks/gpu_check.sh [--dry-run] [OUT]     (default OUT: results/gpu)
#
# --dry-run runs every stage at toy size on whatever device JAX sees (CI runs it on the CPU);
# it skips the test suite, which CI runs anyway.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-results/gpu}
mkdir -p "$OUT"
export JAXFNO_CACHE=${JAXFNO_CACHE:-$PWD/.cache}
status=0
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to OUT/NAME.txt, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/stages.txt"
  [ $rc -eq 0 ] || status=1
}

if [ $DRY -eq 0 ]; then
  python -m pip install --no-deps --quiet -e . || exit 1   # the GPU image has every dependency
  SIZE=(); MEMBERS=8; REPEATS=10; SCALE=full; SEEDS=4; ARM=stable
else
  SIZE=(--width 4 --blocks 2 --modes 4); MEMBERS=2; REPEATS=2; SCALE=smoke; SEEDS=1; ARM=control
fi
: > "$OUT/stages.txt"
stage env 60 python -c "
import json, platform, jax, flax, optax
d = jax.devices()[0]
print(json.dumps({'device': f'{d.platform}:{getattr(d, \"device_kind\", \"\")}', 'devices': len(jax.devices()),
    'python': platform.python_version(), 'jax': jax.__version__, 'flax': flax.__version__,
    'optax': optax.__version__}, indent=2))"
cp "$OUT/env.txt" "$OUT/env.json"
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
[ $DRY -eq 0 ] && stage pytest 170 python -m pytest -m "not slow" -q -x -p no:cacheprovider tests
stage bench_step 90 jaxfno bench step "${SIZE[@]}" --repeats $REPEATS --json-out "$OUT/bench_step.json"
stage bench_seeds 90 jaxfno bench seeds "${SIZE[@]}" --members $MEMBERS --repeats $REPEATS \
  --json-out "$OUT/bench_seeds.json"
stage bench_compile 90 jaxfno bench compile "${SIZE[@]}" --json-out "$OUT/bench_compile.json"
stage study 200 jaxfno study stage-a --scale $SCALE --seeds $SEEDS --arms $ARM --out "$OUT/study"

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
env, step, seeds, comp = (load(n) for n in ("env.json", "bench_step.json", "bench_seeds.json", "bench_compile.json"))
lines = [f"# GPU check on {env['device'] if env else 'unknown device'}", ""]
lines += ["## Stages", "", "```", (out / "stages.txt").read_text().strip(), "```", ""]
if step:
    lines.append(f"- step: JAX {step['jax_step_s']:.4f} s (compile {step['jax_compile_s']:.1f} s)"
                 + (f", PyTorch eager ({step.get('torch_device')}) {step['torch_step_s']:.4f} s, "
                    f"speedup {step['speedup_vs_torch']:.2f}×" if 'torch_step_s' in step else ""))
if seeds:
    k = seeds["members"]
    lines.append(f"- {k} members in one program: {seeds[f'step_s_k{k}']:.4f} s per step = "
                 f"{seeds['together_over_one']:.2f}× one member ({seeds['member_axis']})")
if comp:
    lines.append(f"- compile cache: cold first step {comp['cold_first_step_s']:.1f} s, cached "
                 f"{comp['cached_first_step_s']:.1f} s ({comp['speedup']:.1f}×)")
summary = out / "study" / "report" / "summary.md"
if summary.exists():
    lines += ["", summary.read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
exit $status
