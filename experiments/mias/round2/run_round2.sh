#!/usr/bin/env bash
# Round 2 of the mini-MIAS study end to end on a CPU (experiments/mias/round2/README.md): prepare
# (placement-normalised, pectoral muscle out of the score region) -> StyleGAN2 + ADA at 128 px ->
# f-AnoGAN encoder -> one 16-start projection of val + test -> N = 1, 9, 16 -> both comparisons,
# the auto-picked score and the paper's mean_map -> bilateral scores -> tables. Resumable: rerun it.
#   MIAS=/path/to/mini-mias OUT=outputs/mias128 bash experiments/mias/round2/run_round2.sh
# Re-scoring the shipped model instead of training: README.md, "Re-score the shipped model".
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
MIAS=${MIAS:-$PWD/../shared/data/mini-mias}
OUT=${OUT:-outputs/mias128}
MODEL=${MODEL:-$OUT/model}   # where the networks that are scored live (the shipped copy: experiments/mias/model)
DATASET=${DATASET:-data/prepared/mias_mlo_128}
X=+experiment=mias128_cpu
# a dry run with tiny settings (checks the chain in minutes; numbers meaningless):
#   OUT=outputs/dry SEEDS="1 2 3" EXTRA="projection.steps=1" ENCODER_EXTRA="encoder_train.total_kimg=0.05" \
#   GENERATOR_FROM=outputs/mias128/train/best bash experiments/mias/round2/run_round2.sh
read -r -a SEED_COUNTS <<< "${SEEDS:-1 9 16}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
read -r -a ENCODER_ARGS <<< "${ENCODER_EXTRA:-}"
export OMP_WAIT_POLICY=PASSIVE

# 1. prepare: 246 films -> 128 px, cropped to the breast, pectoral muscle removed from the masks (s)
"$PY" -m mammo_anogan.prepare data=mias "data.source=$MIAS" data.resolution=128 \
    data.preprocess.pectoral_removal=true data.split.val_fraction=0.1 data.split.test_fraction=0.15 \
    data.split.seed=5 "data.dataset_dir=$DATASET"

# 2. StyleGAN2 + ADA on the 62 normal training films (model.total_kimg; resumable); skipped when
#    GENERATOR_FROM names a folder with generator.pt + discriminator.pt
if [ -z "${GENERATOR_FROM:-}" ]; then
  GENERATOR_FROM=$OUT/train/best
  if [ ! -f "$OUT/train/generator.pt" ]; then   # the final export: training has finished
    resume=()
    [ -f "$OUT/train/checkpoints/last.ckpt" ] && resume=(ckpt_path=last)
    OMP_NUM_THREADS=2 "$PY" -m mammo_anogan.train "$X" "data.dataset_dir=$DATASET" \
        "hydra.run.dir=$OUT/train" "${resume[@]}"
  fi
fi
mkdir -p "$MODEL"
# the lowest-SWD networks on the training normals (never val/test), exported together
[ -f "$MODEL/generator.pt" ] || cp "$GENERATOR_FROM/generator.pt" "$GENERATOR_FROM/discriminator.pt" "$MODEL/"

# 3. the f-AnoGAN encoder (izi_f) on the training normals, G and D frozen
if [ ! -f "$MODEL/encoder.pt" ]; then
  OMP_NUM_THREADS=2 "$PY" -m mammo_anogan.train_encoder "$X" "data.dataset_dir=$DATASET" \
      "generator=$MODEL/generator.pt" "hydra.run.dir=$OUT/encoder" "${ENCODER_ARGS[@]}"
  cp "$OUT/encoder/encoder.pt" "$MODEL/"
fi
NETS=("generator=$MODEL/generator.pt" "encoder=$MODEL/encoder.pt" "data.dataset_dir=$DATASET" "${EXTRA_ARGS[@]}")
MAX_SEEDS=${SEED_COUNTS[-1]}
SEED_LIST=$(IFS=,; echo "${SEED_COUNTS[*]}")

# 4. one projection of val + test with 16 starts (start 0 = E(x), starts 1-15 jittered around it)
OMP_NUM_THREADS=2 "$PY" -m mammo_anogan.score "$X" "${NETS[@]}" "projection.num_seeds=$MAX_SEEDS" \
    score.figures=false logger=none "hydra.run.dir=$OUT/src_n$MAX_SEEDS"

# 5. N = 1, 9, 16 = the first 1 / 9 / 16 starts; each sweep only evaluates (threshold on validation)
for comparison in mal:malignant_vs_normal abn:abnormal_vs_normal; do
  for method in auto mean_map; do
    sweep="$OUT/${comparison%%:*}_$method"
    [ -d "$sweep" ] || "$PY" experiments/mias/derive_seed_subsets.py "$OUT/src_n$MAX_SEEDS" "$sweep" \
        --seeds "${SEED_COUNTS[@]}"
    "$PY" -m mammo_anogan.score -m "$X" "${NETS[@]}" "projection.num_seeds=$SEED_LIST" \
        "score.comparison=${comparison##*:}" "score.method=$method" logger=none "hydra.sweep.dir=$sweep"
  done
done

# 6. bilateral scores (secondary analysis), each picked on validation, for every N and comparison
for sweep in "$OUT"/mal_auto "$OUT"/abn_auto; do
  comparison=malignant_vs_normal; [ "$(basename "$sweep")" = abn_auto ] && comparison=abnormal_vs_normal
  for job in $(seq 0 $((${#SEED_COUNTS[@]} - 1))); do
    "$PY" -m mammo_anogan.evaluation.bilateral "$sweep/$job" --dataset "$DATASET" \
        --comparison "$comparison" --sigma 3 --edge-margin 6 --polarity positive
  done
done

# 7. tables for the README
"$PY" experiments/mias/summarize.py "$OUT/tables" "$OUT"/{mal,abn}_{auto,mean_map}
"$PY" experiments/mias/round2/bilateral_table.py "$OUT/tables/bilateral.md" "$OUT"/{mal,abn}_auto
