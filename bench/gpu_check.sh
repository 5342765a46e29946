#!/usr/bin/env bash
# The GPU check: one command that proves training and scoring run correctly and fast on one CUDA GPU.
#
#   bash bench/gpu_check.sh [OUT_DIR]           # on a GPU node (about 7-8 minutes on one H200)
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh /tmp/dry   # the same stages on the CPU, tiny sizes
#
# Stages (each bounded by `timeout`, each appends to OUT_DIR/summary.md as it finishes, so a killed
# run still shows how far it got; logs go to OUT_DIR, at most 8 files):
#   1. environment: torch, CUDA, GPU, bf16 support;
#   2. bench/train.py at 256 px with the anchor's settings (paper256 widths: channel_base 16384,
#      batch 32, minibatch-std group 8, ADA) -> s/kimg, ratio to stylegan2-ada-pytorch's 7.19-7.57
#      s/kimg on the same GPU kind, GPU ms per phase, the ten most expensive CUDA kernels;
#   3. pytest -m gpu (the GPU tier: four-phase bf16 step without host syncs, device-side NaN skip,
#      bf16 + channels_last projection, export/reload, SIGTERM pre-emption and resume tolerance);
#   4. a real `+experiment=mias256` training on the prepared mini-MIAS normals: 60 s, stopped by
#      SIGTERM (sent to the whole process group, as a scheduler does), resumed for 30 s more (SIGTERM
#      again), then G_ema / D exported from last.ckpt;
#   5. a short `score` of val + test with projection.loss=disc_features and N = 9 seeds -> metrics.json;
#   6. bench/train.py at 512 px (channel_base 32768, batch 32);
#   7. bench/score.py at the paper's protocol (512 px, 9 seeds, LPIPS-VGG with a random trunk),
#      extrapolated to 100 images x 1000 steps.
#
# Needs on an offline GPU node: the wheels of ../shared/gpu/fetch_wheels.sh in .whl/ and the prepared
# mini-MIAS dataset in data/prepared/mias_mlo_256 (python -m mammo_anogan.prepare data=mias
# data.resolution=256), both carried with the working tree (together about 17 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
DRY=${GPU_CHECK_DRY_RUN:-0}
PY=${PYTHON:-python3}
SUMMARY=$OUT_DIR/summary.md
DATASET=${GPU_CHECK_DATASET:-data/prepared/mias_mlo_256}
RUN=${GPU_CHECK_RUN_DIR:-/tmp/gpu_check_run}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true HYDRA_FULL_ERROR=1
if [ -d .whl ] && ! $PY -c "import hydra, pydicom, albumentations, lpips" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
rm -rf "$RUN"

if [ "$DRY" = "1" ]; then  # tiny sizes on the CPU: every command and path is exercised
  TRAIN_BENCH_256=(--resolutions 32 --channel-base 256 --channel-max 32 --batch 4 --steps 4 --warmup 1)
  TRAIN_BENCH_512=(--resolutions 64 --channel-base 256 --channel-max 32 --batch 4 --steps 4 --warmup 1)
  SCORE_BENCH=(--resolution 32 --seeds 2 --steps 2 --images 2 --batch-images 2 --channel-base 256
               --channel-max 32 --latent-dim 32 --loss lpips_alex --random-lpips --device cpu)
  ENCODER_BENCH=(--resolution 32 --init encoder --steps 10 --lr 0.01 --images 8 --batch-images 4
                 --channel-base 256 --channel-max 32 --latent-dim 32 --loss mse --device cpu)
  TRAIN_ARGS=(trainer=cpu model.generator.channel_base=256 model.generator.channel_max=16
              model.generator.z_dim=32 model.generator.w_dim=32 model.generator.mapping_layers=2
              data.loader.batch_size=4)
  SCORE_ARGS=(trainer=cpu projection.steps=2 projection.num_seeds=2 projection.w_std_samples=200
              projection.batch_images=16)
  TRAIN_S=60; RESUME_S=40; TESTS_S=120
  SCALE=${GPU_CHECK_LIMIT_SCALE:-6}  # a 2-core CPU is far slower than the node: stretch the stage limits
else
  TRAIN_BENCH_256=(--resolutions 256 --channel-base 16384 --batch 32 --mbstd-group 8 --steps 32 --warmup 4
                   --profile-steps 4 --anchor 7.19 7.57)
  TRAIN_BENCH_512=(--resolutions 512 --channel-base 32768 --batch 32 --steps 16 --warmup 3 --profile-steps 3)
  SCORE_BENCH=(--resolution 512 --seeds 9 --steps 20 --images 8 --batch-images 8 --loss lpips_vgg
               --random-lpips)
  # issue 12: the encoder-initialised scoring path (random-init paper widths; 10 W+ steps like the demo)
  ENCODER_BENCH=(--resolution 256 --init encoder --steps 10 --lr 0.01 --images 256 --batch-images 64
                 --loss mse)
  TRAIN_ARGS=()
  SCORE_ARGS=(projection.steps=20 projection.num_seeds=9 projection.batch_images=16)
  TRAIN_S=60; RESUME_S=30; TESTS_S=170
  SCALE=1
fi
# cuDNN autotuning (trainer.benchmark) took 55-83 s of the first iteration at 256 px on an H200: the
# short real training uses cuDNN's heuristics, so its minute trains; the speed benchmarks autotune.
COMMON=(data.dataset_dir="$DATASET" data.loader.num_workers=2 logger=csv callbacks.fidelity=null
        callbacks.best_fidelity=null callbacks.progress_bar=null trainer.enable_progress_bar=false
        trainer.benchmark=false)

stage() {  # stage NAME LIMIT_S LOG COMMAND...: run bounded, record rc and seconds in the summary
  local name=$1 limit=$(($2 * SCALE)) log=$3
  shift 3
  local start=$SECONDS
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" >> "$OUT_DIR/$log"
  timeout -s TERM -k 15 "$limit" "$@" >> "$OUT_DIR/$log" 2>&1
  local rc=$?
  echo "| $name | $rc | $((SECONDS - start)) s |" >> "$SUMMARY"
  echo "[gpu_check] $name: rc $rc after $((SECONDS - start)) s" >&2
  return $rc
}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "| stage | rc | wall |"
  echo "|---|---|---|"
} > "$SUMMARY"

stage environment 60 env.log $PY - <<'EOF'
import torch, pytorch_lightning, platform
print("python", platform.python_version(), "torch", torch.__version__, "lightning", pytorch_lightning.__version__)
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported(),
          "memory GiB", round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
EOF

stage bench_train_256 150 bench.log $PY bench/train.py "${TRAIN_BENCH_256[@]}" --json "$OUT_DIR/bench.jsonl"

stage gpu_tests "$TESTS_S" tests.log $PY -m pytest -m gpu tests/gpu -q -s -p no:cacheprovider

# Real training on the mini-MIAS normals, pre-empted by SIGTERM to the process group, resumed, exported.
stage train_60s $((TRAIN_S + 40)) train.log bash -c "timeout -s TERM $TRAIN_S $PY -m mammo_anogan.train \
  +experiment=mias256 hydra.run.dir=$RUN ${COMMON[*]} ${TRAIN_ARGS[*]}; echo exit=\$?"
stage resume_30s $((RESUME_S + 40)) train.log bash -c "timeout -s TERM $RESUME_S $PY -m mammo_anogan.train \
  +experiment=mias256 hydra.run.dir=$RUN ckpt_path=last ${COMMON[*]} ${TRAIN_ARGS[*]}; echo exit=\$?"
stage export 60 train.log $PY experiments/mias/export_checkpoint.py "$RUN/checkpoints/last.ckpt" "$RUN"

stage score_n9 120 score.log $PY -m mammo_anogan.score +experiment=mias256 generator="$RUN/generator.pt" \
  data.dataset_dir="$DATASET" projection.loss=disc_features hydra.run.dir="$RUN/score" logger=none \
  "${SCORE_ARGS[@]}"
cp "$RUN/score/metrics.json" "$OUT_DIR/metrics.json" 2>/dev/null
cp "$RUN/score/roc.png" "$OUT_DIR/roc.png" 2>/dev/null

stage bench_train_512 150 bench.log $PY bench/train.py "${TRAIN_BENCH_512[@]}" --json "$OUT_DIR/bench.jsonl"
stage bench_score 120 bench.log $PY bench/score.py "${SCORE_BENCH[@]}"
stage bench_score_encoder 90 bench.log $PY bench/score.py "${ENCODER_BENCH[@]}"

if [ "${GPU_CHECK_EXTRA:-0}" = "1" ]; then  # exploration, not part of the check: FIR formulations and
  # the regularisers under autocast instead of fp32
  stage fir_variants 60 bench.log $PY bench/fir_variants.py $([ "$DRY" = "1" ] && echo --device cpu --batch 1 --reps 1)
  stage bench_train_256_reg_autocast 120 bench.log $PY bench/train.py "${TRAIN_BENCH_256[@]}" \
    --reg-precision autocast --profile-steps 0 --json "$OUT_DIR/bench.jsonl"
fi

$PY bench/gpu_summary.py "$OUT_DIR" >> "$SUMMARY" 2>&1
cat "$SUMMARY"
