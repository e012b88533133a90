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
# The demo needs the package alone; tests and lint also need the test extras. The stamp records what was
# installed for which pyproject.toml, so a venv is set up once and topped up only when more is needed.
# --no-compile: Python compiles the modules it imports on first use, instead of pip compiling all of torch.
stamp="$VENV/.hybridcxr-install"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
case "${1:-}" in demo) need="$want" ; spec='.' ;; *) need="$want test" ; spec='.[test]' ;; esac
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$need" ] && [ "$have" != "$want test" ]; then
  "$VENV/bin/python" -m pip install --quiet --no-compile -e "$spec"
  echo "$need" > "$stamp"
fi
export NO_ALBUMENTATIONS_UPDATE=1
# The venv is ours: let Python cache the modules it compiles there. With PYTHONDONTWRITEBYTECODE set (some
# images set it), every process would compile torch, ultralytics and the rest again: about 13 s each.
unset PYTHONDONTWRITEBYTECODE

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
