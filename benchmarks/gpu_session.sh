#!/usr/bin/env bash
# One prepared check for a session that is lent a GPU (the `device` tool): the GPU tests
# against the reference oracle, then the CUDA GEMM benchmark. Writes logs and JSON to
# $OUT (default benchmarks/out). Run from the repository root; needs torch + Triton.
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the baseline run below works from another folder
export PYTHONUNBUFFERED=1
# quantune.search / quantune.calibration live in top-level folders mapped by pyproject:
# install the checkout (no deps: the machine's torch and Triton stay) into a scratch site;
# PYTHONSAFEPATH keeps `python3 -m pytest` from importing the unmapped ./quantune instead.
SITE=$(mktemp -d)
python3 -m pip install -q --no-deps --no-build-isolation --target "$SITE" . >/dev/null 2>&1 \
    || { echo "pip install failed; the search/calibration tests will not import"; }
export PYTHONPATH=$SITE
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu_env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu_env.txt"
# Only the files that hold gpu tests: the others need the CPU extras (optuna, xgboost),
# which the GPU machine may lack, and would fail collection for nothing.
GPU_TEST_FILES=$(grep -rl "pytest\.mark\.gpu" tests --include="*.py" | sort)
# xdist: the many kernel specializations compile in parallel on the host's cores.
WORKERS=${TEST_WORKERS:-8}
python3 -c "import xdist" 2>/dev/null || WORKERS=0
PYTHONSAFEPATH=1 timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -rs -m gpu $GPU_TEST_FILES -p no:cacheprovider \
    -p no:benchmark $( [ "$WORKERS" != 0 ] && echo "-n $WORKERS" ) 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
TRITON_PRINT_AUTOTUNING=1 timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/gemm.py --device cuda \
    --json "$OUT/gemm_cuda.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gemm_cuda.log" | grep -v "^Autotuning kernel"
# A/B against an earlier version of the kernels on the same machine: BASELINE_DIR holds
# that version's quantune/ and benchmarks/ (e.g. `git archive REF quantune benchmarks |
# tar -x -C .exp/base`, carried to the machine); its rows go to gemm_cuda_baseline.json.
if [ -n "${BASELINE_DIR:-}" ]; then
    (cd "$BASELINE_DIR" && PYTHONPATH=$PWD timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/gemm.py --device cuda \
        --json "$OUT/gemm_cuda_baseline.json" ${BENCH_ARGS:-} 2>&1) | tee "$OUT/gemm_cuda_baseline.log" \
        | grep -v "^Autotuning kernel\|^Triton autotuning\|^with key\|^finished after\|^best config"
fi
