#!/usr/bin/env bash
# Reproduces this folder's fidelity runs (SPEC §7.1): `stable_hybrid`, Adam 1e-3 constant, no
# clipping, full scale, 8 epochs (with a constant schedule these are the first 8 epochs of the
# 20-epoch runs), one run per condition and seed. About 19 min per run on the 2-core CPU when
# it has the CPU to itself. Usage: reproduce.sh [OUT] (default runs/full_asrun).
# asrun and fixed link the 20-epoch runs of ../stage_a_full_cpu_upstream_gain (its reproduce.sh).
set -euo pipefail  # GPU_SEEDS=1 on a GPU: the seeds_h200 runs instead of seeds_cpu
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
# rerun/ and branches/ (issue 21 item 5): the asrun stable run of seed 20260128 again (here it diverged
# 26 steps into epoch 18); the same run stopped after epoch 17 (train.stop_after changes no number of
# those epochs) as the branch point; from it three data orders, each alone, with clip 0.5 and with
# LR 2.5e-4 (epochs 18-20).
jaxfno study stage-a --scale full --arms stable --conditions asrun --seeds 1 --out "$out/branching"
jaxfno study stage-a --scale full --arms stable --conditions asrun --seeds 1 --set train.stop_after=17 --out "$out/snap"
src="$out/snap/asrun/stable/seed20260128"
for i in 1 2 3; do
  order=(--set train.stop_after=0 --set train.seed=$((20260200 + i)))
  jaxfno branch "$src" --from last --out "$out/branches/seed_order$i" "${order[@]}"
  jaxfno branch "$src" --from last --out "$out/branches/clip0.5_order$i" "${order[@]}" --set optim.grad_clip=0.5
  jaxfno branch "$src" --from last --out "$out/branches/lr2.5e-4_order$i" "${order[@]}" --set optim.lr=2.5e-4
done
# branches_e16/: the same three groups from the snap's best checkpoint (the end of epoch 16, before
# epoch 17's short batch), epochs 17-20.
for i in 1 2 3; do
  order=(--from best --set train.stop_after=0 --set train.seed=$((20260200 + i)))
  jaxfno branch "$src" "${order[@]}" --out "$out/branches_e16/seed_order$i"
  jaxfno branch "$src" "${order[@]}" --out "$out/branches_e16/clip0.5_order$i" --set optim.grad_clip=0.5
  jaxfno branch "$src" "${order[@]}" --out "$out/branches_e16/lr2.5e-4_order$i" --set optim.lr=2.5e-4
done
for point in branches branches_e16; do
  jaxfno outcomes "$out/$point" --relative-to "$out/$point" --out "$out/$point/outcomes.md"
done
# seeds_h200/ (on a GPU; its README): stable against stable_lowlr from six seeds, one vmapped program.
# seeds_cpu/ (this CPU, one seed per program): stable_warmup, stable_warmup_clip, stable_warmup_lowlr and the
# hybrid control
# from seeds, beside the asrun stable runs above.
if [ "${GPU_SEEDS:-0}" = 1 ]; then
  jaxfno study stage-a --scale full --conditions asrun --seeds 6 --arms stable stable_lowlr \
    --set execution.conv3x3=im2col --out "$out/seeds_h200"
  jaxfno outcomes "$out/seeds_h200" --relative-to "$out/seeds_h200" --out "$out/seeds_h200/outcomes.md"
else
  jaxfno study stage-a --scale full --conditions asrun --seeds 6 --arms stable_warmup --members-per-program 1 \
    --out "$out/seeds_cpu"
  jaxfno study stage-a --scale full --conditions asrun --seeds 1 --arms stable_warmup_clip control \
    stable_warmup_lowlr --members-per-program 1 --out "$out/seeds_cpu"
  jaxfno study stage-a --scale full --conditions asrun --seeds 2 --arms stable_warmup_clip --members-per-program 1 \
    --out "$out/seeds_cpu"
  # stable from seven seeds, keeping every epoch's state from 12 on to branch from (the committed folder
  # links seeds 20260128-30 to ../stage_a_full_cpu_upstream_gain's runs of the same config instead)
  jaxfno study stage-a --scale full --conditions asrun --seeds 7 --arms stable --members-per-program 1 \
    --keep-epochs-from 12 --out "$out/seeds_cpu"
  jaxfno outcomes "$out/seeds_cpu" --relative-to "$out/seeds_cpu" --out "$out/seeds_cpu/outcomes.md"
  # branches_seed20260132_e16/ and _e15/: seed 20260132 diverged early in epoch 17 here; from its state
  # after epoch 16 (after the short batch before the divergence) and after epoch 15 (before it), three
  # data orders, each alone, with clip 0.5 and with LR 2.5e-4, trained to the end of epoch 18.
  src="$out/seeds_cpu/asrun/stable/seed20260132"
  for e in 16 15; do
    point="$out/branches_seed20260132_e$e"
    for i in 1 2 3; do
      order=(--after-epoch "$e" --set train.seed=$((20260200 + i)) --set train.stop_after=18)
      jaxfno branch "$src" "${order[@]}" --out "$point/seed_order$i"
      jaxfno branch "$src" "${order[@]}" --out "$point/clip0.5_order$i" --set optim.grad_clip=0.5
      jaxfno branch "$src" "${order[@]}" --out "$point/lr2.5e-4_order$i" --set optim.lr=2.5e-4
    done
    # after epoch 15, two more null branches (data orders 4 and 5)
    for i in $([ "$e" = 15 ] && echo 4 5); do
      jaxfno branch "$src" --after-epoch "$e" --set train.seed=$((20260200 + i)) --set train.stop_after=18 \
        --out "$point/seed_order$i"
    done
    jaxfno outcomes "$point" --relative-to "$point" --out "$point/outcomes.md"
  done
  # branches_seed20260133_e13/: seed 20260133 diverged early in epoch 14 here; from its state after
  # epoch 13, three data orders alone, then three with LR 2.5e-4, then three with clip 0.5, to epoch 15.
  src="$out/seeds_cpu/asrun/stable/seed20260133"
  point="$out/branches_seed20260133_e13"
  for group in seed lr2.5e-4 clip0.5; do
    change=(); [ $group = lr2.5e-4 ] && change=(--set optim.lr=2.5e-4); [ $group = clip0.5 ] && change=(--set optim.grad_clip=0.5)
    for i in 1 2 3; do
      jaxfno branch "$src" --after-epoch 13 --set train.seed=$((20260200 + i)) --set train.stop_after=15 \
        "${change[@]}" --out "$point/${group}_order$i"
    done
  done
  jaxfno outcomes "$point" --relative-to "$point" --out "$point/outcomes.md"
  # its figure (the README's): the nine branches side by side, one colour per change
  jaxfno compare "$point"/seed_order{1,2,3} "$point"/lr2.5e-4_order{1,2,3} "$point"/clip0.5_order{1,2,3} \
    --groups "data order only"{,,} "lr 2.5e-4"{,,} "clip 0.5"{,,} --from-epoch 13 --out "$point/compare.png"
  # longer_cpu/: stable_lowlr trained for 40 epochs (constant LR: its first 20 are the recipe's)
  jaxfno study stage-a --scale full --conditions asrun --seeds 1 --arms stable_lowlr --members-per-program 1 \
    --set train.epochs=40 --out "$out/longer_cpu"
fi
