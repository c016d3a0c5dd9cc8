#!/usr/bin/env bash
# The wheel as a user gets it: `python -m build` (sdist, then the wheel from the sdist) on a copy of the
# tree git sees, a fresh venv with torch (the local CPU wheel) and the wheel with its extras, then, from a
# directory outside the repository (so no source folder shadows the installed package):
#   driftloop --help; `import monitor` fails (nothing generic installed); `import driftloop.monitor` works;
#   the fast lane (`make check`'s tests) over a copy of tests/ and the repository files they read.
# Usage: bash bench/wheel_check.sh [extra pytest args]     (make wheel-check). KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
# make check's selection, less the tests that read the source tree (there is none here, by design)
FAST="not postgres and not kafka and not slow and not gpu and not external and not browser and not source"
TMP=$(mktemp -d -t driftloop-wheel.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"' EXIT
log() { printf '[wheel] %s (%ss)\n' "$1" "$SECONDS" >&2; }

log "copying the tree git sees to $TMP/src"
mkdir -p "$TMP/src"
# (a tracked file deleted in the work tree is not copied: what is built is the work tree)
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
  if [ -e "$f" ] || [ -L "$f" ]; then cp -P --parents "$f" "$TMP/src"; fi
done

log "python -m build (isolated: sdist, then the wheel from it)"
"$PY" -m venv "$TMP/buildenv"
"$TMP/buildenv/bin/python" -m pip install -q build
(cd "$TMP/src" && "$TMP/buildenv/bin/python" -m build --outdir "$TMP/dist" >"$TMP/build.log" 2>&1) \
  || { tail -30 "$TMP/build.log"; exit 1; }
WHEEL=$(ls "$TMP"/dist/driftloop-*.whl)
log "built $(basename "$WHEEL") and $(basename "$(ls "$TMP"/dist/driftloop-*.tar.gz)")"

log "fresh venv: torch==2.13.0 (CPU), then the wheel with [dev,embeddings,retrain]"
"$PY" -m venv "$TMP/venv"
V="$TMP/venv/bin"
"$V/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$V/python" -m pip install -q "torch==2.13.0"
"$V/python" -m pip install -q "${WHEEL}[dev,embeddings,retrain]"

RUN="$TMP/run"
mkdir -p "$RUN"
# the tests and the repository files they read; never a Python package folder of the source
cp -r "$ROOT/tests" "$RUN/tests"
find "$RUN/tests" -name __pycache__ -prune -exec rm -rf {} +
for f in pyproject.toml docker-compose.yml .env.example deploy dashboards docs README.md; do
  [ -e "$ROOT/$f" ] && cp -r "$ROOT/$f" "$RUN/"
done
cd "$RUN"
log "driftloop --help (installed entry point)"
"$V/driftloop" --help >/dev/null
if "$V/python" -c "import monitor" 2>/dev/null; then log "FAIL: 'import monitor' works: a generic top-level package is installed"; exit 1; fi
"$V/python" -c "import driftloop.monitor, driftloop.retrain, driftloop.connectors, driftloop.migrations, sys; \
import driftloop; assert '/site-packages/' in driftloop.__file__, driftloop.__file__; print('driftloop from', driftloop.__file__)"
log "the fast lane against the installed wheel"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$V/python" -m pytest -q -p no:cacheprovider -m "$FAST" "$@"
log "wheel check passed"
