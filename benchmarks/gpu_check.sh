#!/usr/bin/env bash
# clipscale's figures on a single-GPU NVIDIA machine, in one go, in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine: writes benchmarks/results/gpu.json
#   bash benchmarks/gpu_check.sh --dry-run  # on CPU in seconds (CI runs it: tests/test_gpu_check.py)
#
# Further arguments go to benchmarks/gpu_check.py (--skip deepspeed|data|ray|model, --out, --peak-tflops).
# It prints one `gpu_check:` line per figure and one per thing it skipped, with the reason.
#
# The machine may hold Python with torch and CUDA and nothing else of clipscale's stack, and no
# network. clipscale itself runs from this tree (PYTHONPATH); what it needs beyond torch comes as
# wheels in benchmarks/wheels/ (git ignores them; carry the folder with the tree), installed into
# a temporary folder, never into the machine's Python. To vendor them, on any machine with pip:
#
#   W=benchmarks/wheels; P="--python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: --no-deps"
#   pip download $P -d $W open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth            # the model (~1.6 MiB)
#   pip download $P -d $W hjson pydantic pydantic-core annotated-types typing-inspection  # DeepSpeed's needs
#   pip wheel --no-deps -w $W deepspeed==0.19.8    # DeepSpeed ships only an sdist: build its pure wheel
#
# (Match --python-version to the GPU machine's python3. Leave out a wheel whose package is already
# there. Ray is far larger than the ~60 MiB that can travel: the Ray micro ladder runs only where
# Ray is installed.)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${GPU_CHECK_WHEELS:-benchmarks/wheels}
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if (( ${#wheels[@]} )); then
    site=$(mktemp -d -t gpu-check-site.XXXXXX)
    # --no-deps: the wheels are the whole set; --no-index: there is no network.
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: ${#wheels[@]} carried wheels installed into $site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# 8 minutes in all; the Python side stops starting sections at --budget-s and saves after each one.
exec timeout --kill-after=10 480 "$PY" benchmarks/gpu_check.py "$@"
