#!/usr/bin/env bash
# One entry point for a fresh machine: creates (or reuses) .venv, installs hybridcxr with its test extras,
# then runs the demo on built-in phantom data or the test suite.
#   bash tools/dev.sh demo [OUT] [--size small|medium]   # the main job on phantom data, nothing downloaded
#   bash tools/dev.sh test [ARGS]    # the test suite (pytest ARGS)
#   bash tools/dev.sh lint           # ruff check (CI runs it before the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HYBRIDCXR_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.hybridcxr-install"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi
export NO_ALBUMENTATIONS_UPDATE=1

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    "$VENV/bin/hybridcxr" demo --out "${1:-demo-out}" "${@:2}"
    ;;
  test)
    "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    "$VENV/bin/ruff" check hybridcxr tests tools "$@"
    ;;
  *)
    echo "usage: bash tools/dev.sh demo [OUT] | test [PYTEST ARGS] | lint" >&2
    exit 2
    ;;
esac
