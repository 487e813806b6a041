#!/usr/bin/env bash
# Train and evaluate the bundled tiny model end to end on the CPU (docs/tiny_model.md).
#   bash scripts/train_tiny/run_all.sh [--quick] [RUN_DIR]      # --quick: every stage for seconds (CI)
# Without --quick these are the arguments of the run that produced arc_fast/assets/default (its manifest.json
# and docs/tiny_eval/bundled_run_commands.txt have the exact commands; that run encoded with batch 32 and took
# its autoencoder from a probe run of the same command). Ship with 05_bundle.py --model base (docs/tiny_model.md).
# The time limits make a run depend on the machine's speed: the numbers in docs/tiny_model.md come from 2 shared
# CPU cores, one thread per process.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; shift; fi
OUT=${1:-${TMPDIR:-/tmp}/arc_fast_tiny_run}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python}
# 1: the hop-32 Oobleck VAE from scratch (tone-heavy pool, latent noise 0.1 so that sine tones keep latent
#    power), then 768 training clips encoded to $OUT/latents.
$PY scripts/train_tiny/01_autoencoder.py --out "$OUT" --steps 3000 --batch 4 --crop 4096 --lr 1e-3 \
    --grad-clip 1.0 --l1-weight 1.0 --tone-share 0.5 --latent-noise 0.1 --clips 768 --threads 1 \
    --time-limit 540 $QUICK
# 2: rectified-flow pretraining (tones drawn 3x as often), EMA or raw weights chosen by the pitch check.
$PY scripts/train_tiny/02_pretrain_rf.py --out "$OUT" --patch-size 8 --steps 9000 --batch 16 --lr 1e-3 \
    --tone-weight 3 --time-limit 1560 --snapshot-every 250 --threads 2 $QUICK
# 3: ARC with and without the contrastive loss, in parallel (one core each).
$PY scripts/train_tiny/03_arc.py --out "$OUT" --only arc ${ARC_ARGS:---steps 300 --batch 16 --lr 1e-4} --threads 1 $QUICK & A=$!
$PY scripts/train_tiny/03_arc.py --out "$OUT" --only arc_noc ${ARC_ARGS:---steps 300 --batch 16 --lr 1e-4} --threads 1 $QUICK & B=$!
wait $A
wait $B
# 4: evaluation table and plot.
$PY scripts/train_tiny/04_eval.py --out "$OUT" --results "$OUT/eval" --samples 4 --threads 2 $QUICK
