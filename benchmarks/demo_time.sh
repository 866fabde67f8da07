#!/usr/bin/env bash
# The README's first command, timed from a cold start (no compilation cache, dataset built):
# writes results/demo_cpu/{elapsed.json,report/} with the machine named. Run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/demo_cpu}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s.%N)
JAXFNO_CACHE="$work/cache" jaxfno study stage-a --out "$work/study" > "$work/stdout.txt"
end=$(date +%s.%N)
mkdir -p "$out"
rm -rf "$out/report" && cp -r "$work/study/report" "$out/report"
cp "$work/stdout.txt" "$out/stdout.txt"
python3 - "$out" "$start" "$end" <<'PY'
import json, os, platform, subprocess, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
json.dump({"command": "jaxfno study stage-a --out DIR (cold: empty cache, dataset built)",
           "elapsed_s": end - start, "cpu": cpu, "cores": os.cpu_count(), "commit": commit},
          open(f"{out}/elapsed.json", "w"), indent=1)
print(f"{end - start:.0f} s on {os.cpu_count()} cores ({cpu}), commit {commit}")
PY
