#!/usr/bin/env bash
# Reproduces this folder's fidelity runs (SPEC §7.1): `stable_hybrid`, Adam 1e-3 constant, no
# clipping, full scale, 8 epochs (with a constant schedule these are the first 8 epochs of the
# 20-epoch runs), one run per condition and seed. About 19 min per run on the 2-core CPU when
# it has the CPU to itself. Usage: reproduce.sh [OUT] (default runs/full_asrun).
# asrun and fixed link the 20-epoch runs of ../stage_a_full_cpu_upstream_gain (its reproduce.sh).
set -euo pipefail
out=${1:-runs/full_asrun}
base=(--arch stable_hybrid --epochs 8 --lr 1e-3 --scheduler constant --grad-clip 0)
for s in 20260128 20260129 20260130; do
  jaxfno train "${base[@]}" --seed $s --no-set-phi --batch-gain upstream --out "$out/fidelity/asrun_zero_phase/stable/seed$s"
done
for s in 20260128 20260129 20260130; do
  jaxfno train "${base[@]}" --seed $s --no-set-phi --batch-gain none --out "$out/fidelity/asrun_zero_phase_nogain/stable/seed$s"
done
for s in 20260128 20260129 20260130; do
  jaxfno train "${base[@]}" --seed $s --no-set-phi --batch-gain upstream --drop-last \
    --out "$out/fidelity/asrun_zero_phase_drop_last/stable/seed$s"
done
# Tables: the report of every finished run, the outcome table, and FINDINGS.md.
jaxfno study report "$out/fidelity" --scale full
jaxfno outcomes "$out/fidelity" --relative-to "$out/fidelity" --out "$out/fidelity/outcomes.md"
