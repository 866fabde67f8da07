#!/usr/bin/env bash
# Reproduces this folder's runs: the full-scale stable_upstream_gain arm (seed 20260128), then
# four branches from its best checkpoint (epoch 18), their comparison, a second seed (20260129),
# the control arm, and a third seed (20260130) with three branches. On the 2-core CPU:
# about 47 min for the run and 4.5 min per branch. Usage: reproduce.sh [OUT] (default runs/full_cpu_gain)
set -euo pipefail
out=${1:-runs/full_cpu_gain}
jaxfno study stage-a --scale full --seeds 1 --arms stable_upstream_gain --out "$out"
src=$out/stable_upstream_gain/seed20260128
jaxfno branch "$src" --from best --out "$out/branches/replay"
jaxfno branch "$src" --from best --out "$out/branches/drop_last" --set train.drop_last=true
jaxfno branch "$src" --from best --out "$out/branches/clip1" --set optim.grad_clip=1.0
jaxfno branch "$src" --from best --out "$out/branches/lr2.5e-4" --set optim.lr=2.5e-4
b=$out/branches
runs=("$src" "$b/replay" "$b/drop_last" "$b/clip1" "$b/lr2.5e-4")
labels=(source replay drop_last clip1.0 lr2.5e-4)
jaxfno compare "${runs[@]}" --labels "${labels[@]}" --from-epoch 19 > "$b/compare.md"  # branch epochs only
jaxfno compare "${runs[@]}" --labels "${labels[@]}" --from-epoch 18 --out "$b/compare.png"
# A second seed of the arm (about 45 min): the finished seed 20260128 is reused, 20260129 trained.
jaxfno study stage-a --scale full --seeds 2 --arms stable_upstream_gain --out "$out"
jaxfno compare "$src" "$out/stable_upstream_gain/seed20260129" --labels seed20260128 seed20260129 \
  --out "$out/seeds_compare.png" > "$out/seeds_compare.md"
# The control: the same seed with the gain off (about 50 min).
jaxfno study stage-a --scale full --seeds 1 --arms stable --out "$out-stable"
jaxfno compare "$src" "$out-stable/stable/seed20260128" --labels stable_upstream_gain stable \
  --out "$b/control_compare.png" > "$b/control_compare.md"
# A third seed of the arm (about 48 min; the two finished seeds are reused) and three branches
# from its best checkpoint (epoch 18), about 5 min each.
jaxfno study stage-a --scale full --seeds 3 --arms stable_upstream_gain --out "$out"
src3=$out/stable_upstream_gain/seed20260130
b3=$out/branches_seed20260130
jaxfno branch "$src3" --from best --out "$b3/drop_last" --set train.drop_last=true
jaxfno branch "$src3" --from best --out "$b3/clip1" --set optim.grad_clip=1.0
jaxfno branch "$src3" --from best --out "$b3/lr2.5e-4" --set optim.lr=2.5e-4
runs3=("$src3" "$b3/drop_last" "$b3/clip1" "$b3/lr2.5e-4")
labels3=(source drop_last clip1.0 lr2.5e-4)
jaxfno compare "${runs3[@]}" --labels "${labels3[@]}" --from-epoch 19 > "$b3/compare.md"
jaxfno compare "${runs3[@]}" --labels "${labels3[@]}" --from-epoch 18 --out "$b3/compare.png"
jaxfno compare "$out/stable_upstream_gain/seed20260128" "$out/stable_upstream_gain/seed20260129" "$src3" \
  --labels seed20260128 seed20260129 seed20260130 --out "$out/seeds3_compare.png" > "$out/seeds3_compare.md"
# The gain-off control for seed 20260130 (about 46 min).
jaxfno train --arch stable_hybrid --seed 20260130 --epochs 20 --batch-size 16 --lr 1e-3 --scheduler constant \
  --grad-clip 0 --batch-gain none --out "$out-stable-seed20260130"
