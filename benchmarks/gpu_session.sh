#!/usr/bin/env bash
# One prepared check for a session that is lent a GPU (the `device` tool): the GPU tests
# against the reference oracle, then the CUDA GEMM benchmark. Writes logs and JSON to
# $OUT (default benchmarks/out). Run from the repository root; needs torch + Triton.
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu_env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu_env.txt"
# xdist: the many kernel specializations compile in parallel on the host's cores.
timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/core/test_kernels_gpu.py -p no:cacheprovider \
    -n "${TEST_WORKERS:-8}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
TRITON_PRINT_AUTOTUNING=1 timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/gemm.py --device cuda \
    --json "$OUT/gemm_cuda.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gemm_cuda.log" | grep -v "^Autotuning kernel"
