#!/usr/bin/env bash
# The mini-MIAS CPU study end to end, exactly as experiments/mias/README.md reports it.
#
#   bash experiments/mias/run_study.sh [MIAS_DIR] [OUT_DIR]
#
# MIAS_DIR: a mini-MIAS folder (mdbNNN.pgm + Info.txt; default ../shared/data/mini-mias).
# OUT_DIR:  where runs go (default outputs/mias_study; git-ignored). Every step resumes: rerun the
# script after an interruption and it continues (training from last.ckpt, scoring from scores.csv).
# On a 2-core CPU: ~70 min of training to 100 kimg, ~60 min of projection (both losses side by side).
set -euo pipefail
MIAS=${1:-../shared/data/mini-mias}
OUT=${2:-outputs/mias_study}
PY=${PYTHON:-.venv/bin/python}
DISC_STEPS=${DISC_STEPS:-26}
MSE_STEPS=${MSE_STEPS:-60}
COMMON=(+experiment=mias64_cpu "data.source=$MIAS")

# 1. prepare: 246 films -> 64 px, masks at 256 px (threshold 25), patient-level split (seconds)
"$PY" -m mammo_anogan.prepare data=mias "data.source=$MIAS" data.resolution=64 data.views=[MLO] \
    data.split.val_fraction=0.1 data.split.test_fraction=0.15 data.split.seed=5 prepare.salt_seed=0

# 2. train on the 62 normal training films up to model.total_kimg (100); resumable
resume=()
[ -f "$OUT/train/checkpoints/last.ckpt" ] && resume=(ckpt_path=last)
OMP_NUM_THREADS=2 "$PY" -m mammo_anogan.train "${COMMON[@]}" "hydra.run.dir=$OUT/train" "${resume[@]}"
G=$OUT/train/best/generator.pt   # lowest SWD on the training normals (never val/test)

# 3. project val + test once per loss from 16 seeds, one core each, side by side
OMP_NUM_THREADS=1 "$PY" -m mammo_anogan.score "${COMMON[@]}" "generator=$G" projection.loss=disc_features \
    "projection.steps=$DISC_STEPS" projection.num_seeds=16 score.figures=false logger=none \
    "hydra.run.dir=$OUT/src_disc_features_n16" &
disc=$!
OMP_NUM_THREADS=1 "$PY" -m mammo_anogan.score "${COMMON[@]}" "generator=$G" projection.loss=mse \
    "projection.steps=$MSE_STEPS" projection.num_seeds=16 score.figures=false logger=none \
    "hydra.run.dir=$OUT/src_mse_n16" &
mse=$!
wait "$disc"   # either failing (or pre-empted: exit 143) stops the script here (set -e)
wait "$mse"

# 4. N = 1, 9, 16 = the first 1 / 9 / 16 of the saved seeds; the multirun then only evaluates
#    (threshold = Youden point on validation, applied to test; Table 1 per sweep)
for spec in "disc_features:$DISC_STEPS" "mse:$MSE_STEPS"; do
  loss=${spec%%:*}; steps=${spec##*:}
  rm -rf "$OUT/${loss}_abn" "$OUT/${loss}_mal"
  "$PY" experiments/mias/derive_seed_subsets.py "$OUT/src_${loss}_n16" "$OUT/${loss}_abn"
  cp -r "$OUT/${loss}_abn" "$OUT/${loss}_mal"
  for comparison in abn:abnormal_vs_normal mal:malignant_vs_normal; do
    "$PY" -m mammo_anogan.score -m "${COMMON[@]}" "generator=$G" "projection.loss=$loss" \
        "projection.steps=$steps" projection.num_seeds=1,9,16 "score.comparison=${comparison##*:}" \
        "hydra.sweep.dir=$OUT/${loss}_${comparison%%:*}"
  done
done

# 5. secondary: the other map scores (best_map, topk) of the same projections, each with its own
#    validation threshold; the README reports them beside their validation AUC (no re-projection)
for sweep in "$OUT"/{disc_features,mse}_{abn,mal}; do
  name=$(basename "$sweep"); loss=${name%_*}; steps=$DISC_STEPS; [ "$loss" = mse ] && steps=$MSE_STEPS
  comparison=abnormal_vs_normal; [ "${name##*_}" = mal ] && comparison=malignant_vs_normal
  for method in best_map topk; do
    rm -rf "${sweep}_$method"; cp -r "$sweep" "${sweep}_$method"
    "$PY" -m mammo_anogan.score -m "${COMMON[@]}" "generator=$G" "projection.loss=$loss" \
        "projection.steps=$steps" projection.num_seeds=1,9,16 "score.comparison=$comparison" \
        "score.method=$method" score.figures=false "hydra.sweep.dir=${sweep}_$method"
  done
done

# 6. one table for the README (primary = mean_map, the paper's score)
"$PY" experiments/mias/summarize.py "$OUT" "$OUT"/{disc_features,mse}_{abn,mal}
"$PY" experiments/mias/summarize.py "$OUT/secondary" "$OUT"/{disc_features,mse}_{abn,mal}{,_best_map,_topk}
