#!/usr/bin/env bash
# The GPU acceptance run (issue 35 item 4): `bash bench/gpu_acceptance.sh [--tiny] [--out DIR]`.
# Everything lands in --out (default $OUT, else ./acceptance-out): acceptance.json, acceptance.md
# and the logs. Exit status 1 if any step failed. The steps are in bench/gpu_acceptance.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The project's venv where there is one (dev, CI); the GPU machine's image python otherwise.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/bench/gpu_acceptance.py" "$@"
