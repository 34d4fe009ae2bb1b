#!/usr/bin/env bash
# The GPU check (issue 12): GPU tests, ResNet-50 fp32/fp16 export, server + `ninefold bench` at
# c=1,16,64,256, one JSON + Markdown summary in OUTDIR. GPU parts report "skipped" on a CPU machine.
#
#   scripts/gpu_check.sh OUTDIR [--quick] [--repository SMALL_REPO] [--concurrency 1,16,64,256]
#
# Python: $PYTHON, else the checkout's .venv, else python3. On an H100/H200 host without
# onnxruntime-gpu, unpack the payload of ../shared/gpu/README.md first (PYTHONPATH=/tmp/site:$PWD).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: scripts/gpu_check.sh OUTDIR [--quick] [--repository DIR] [--concurrency LIST]" >&2
    exit 2
fi
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
exec "$python" scripts/gpu_check.py "$@"
