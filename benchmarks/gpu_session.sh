#!/usr/bin/env bash
# One prepared check for a session that is lent a GPU (the `device` tool): the GPU tests
# against the reference oracle, then the CUDA GEMM benchmark. Writes logs and JSON to
# $OUT (default benchmarks/out). Run from the repository root; needs torch + Triton.
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
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
# xdist: the many kernel specializations compile in parallel on the host's cores.
PYTHONSAFEPATH=1 timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu tests -p no:cacheprovider -p no:benchmark \
    -n "${TEST_WORKERS:-8}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
TRITON_PRINT_AUTOTUNING=1 timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/gemm.py --device cuda \
    --json "$OUT/gemm_cuda.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gemm_cuda.log" | grep -v "^Autotuning kernel"
