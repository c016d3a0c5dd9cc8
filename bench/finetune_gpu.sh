#!/usr/bin/env bash
# bench/finetune.py on the GPU machine (one device call per model size; nothing can be downloaded there).
#
# trl, liger-kernel and datasets are benchmark-only: they travel as wheels in .whl/ (ignored through
# .git/info/exclude), installed --no-deps into /tmp/site, with what the image lacks:
#   trl 1.16.0, liger-kernel 0.8.5, datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19 (py312),
#   pydantic 2.14.4, pydantic-core 2.50.5 (cp312), annotated-types 0.8.0, typing-inspection 0.4.5,
#   typing-extensions 4.16.0, pydantic-settings 2.16.3, python-dotenv 1.2.4 (driftloop.settings needs them).
# Fetch them here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl trl==1.16.0 liger-kernel==0.8.5 ...
#
#   device: run(command="bash bench/finetune_gpu.sh 0.5b --trl-batches 64,128", carry=[".whl"], timeout_s=600)
#   then copy $OUT's finetune-<size>-<date>.json to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?usage: finetune_gpu.sh SIZE [finetune.py args]}
shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUTDIR=${OUT:-/tmp/driftloop-finetune-out}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader >&2 || true
DATE=$(date -u +%F)
python3 bench/finetune.py --model-size "$SIZE" --out "$OUTDIR/finetune-$SIZE-$DATE.json" --log-dir "$OUTDIR/logs-$SIZE" "$@" \
  2>&1 | grep -v -e '^Writing model shards' -e 'Loading weights' | tee "$OUTDIR/finetune-$SIZE.log"
