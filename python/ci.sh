#!/usr/bin/env bash
# CI of the Flower app: a venv with pinned flwr, maturin and numpy; the bindings built and
# installed; the Python tests (fake-Grid flow and a real loopback deployment with 3 SuperNodes).
# Usage: python/ci.sh   (from anywhere; uses target/python-ci/venv; CARGO_BUILD_JOBS is honoured)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV=${SPRY_CI_VENV:-$ROOT/target/python-ci/venv}
FLWR_VERSION=1.42.0
start=$(date +%s)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "flwr==$FLWR_VERSION" "maturin>=1.9,<2.0" "numpy>=1.26" pytest
# the cargo target of the bindings stays outside python/ (the Flower app folder must stay small)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/python}
(cd "$HERE" && "$VENV/bin/maturin" build --release --out "$CARGO_TARGET_DIR/wheels")
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$CARGO_TARGET_DIR"/wheels/spry_flwr-*.whl
"$VENV/bin/python" -c "import spry_flwr_native, spry_flwr.strategy; print('spry_flwr imports')"
export FLOWER_VENV=$VENV
(cd "$HERE/tests" && "$VENV/bin/python" -m pytest -q -x "$@")
echo "python/ci.sh: $(( $(date +%s) - start )) s"
