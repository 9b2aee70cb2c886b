#!/usr/bin/env bash
# Every GPU validation in one command, on a 2-GPU machine (nvidia-h200-x2), from the repository root:
#
#     OUT=/path/to/results bash tests/gpu/run_all.sh
#
# kedge must be importable (e.g. installed from a wheel into /tmp/site with PYTHONPATH=/tmp/site).
# Parts, in order, each bounded by `timeout` and all by TOTAL_S (default 500 s; with the kill grace
# of `timeout` still under 9 minutes):
#   1. nvml_dump            the agent's real NVML monitor: fields per GPU, XID thread   (~10 s, max 45)
#   2. GPU checks           pytest -m gpu tests/gpu (gpu_checks.py if pytest is absent) (~30 s, max 90)
#   3. telemetry_overhead   hooks on/off x CUDA_DEVICE_MAX_CONNECTIONS unset/1, 3 rounds (~100 s, max 150)
#   4. nccl_fault_matrix    6 faults x 1 + plain PyTorch baseline (SIGKILL, SIGSTOP, 20 s PG timeout)
#                           running alongside                                        (~220 s, the rest)
# Results in $OUT (6 files): gpu.log (everything printed), nvml.json, checks.log, overhead.json,
# matrix.json, matrix-logs.tar.gz (agent and workload logs of every trial).
set -u
OUT=${OUT:-/tmp/kedge-gpu-out}
TOTAL_S=${TOTAL_S:-500}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the whole script with gloo (no NVML, checks skip)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
LOG="$OUT/gpu.log"
: >"$LOG"
START=$SECONDS

left() { echo $((TOTAL_S - (SECONDS - START))); }
# step NAME MAX_S CMD...: runs CMD under `timeout min(MAX_S, time left)`, logging to gpu.log
step() {
    local name=$1 max=$2
    shift 2
    local limit
    limit=$(left)
    ((limit > max)) && limit=$max
    if ((limit < 10)); then
        echo "=== $name: SKIPPED (out of time: $(left) s left)" | tee -a "$LOG"
        return
    fi
    echo "=== $name (limit ${limit} s, $(left) s left of ${TOTAL_S} s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
    echo "run_all.sh at $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>&1 || true
    "$PY" -c "import kedge.hooks, torch; print('kedge from', kedge.hooks.__file__, '| torch', torch.__version__)"
} >>"$LOG" 2>&1

step nvml_dump 45 "$PY" tests/gpu/nvml_dump.py --seconds 5 --json "$OUT/nvml.json"

if "$PY" -c "import pytest, pytest_timeout" 2>/dev/null; then
    step gpu_checks 90 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider
else
    echo "pytest or pytest-timeout missing: running the checks without pytest" >>"$LOG"
    step gpu_checks 90 "$PY" tests/gpu/gpu_checks.py
fi
awk '/^=== gpu_checks/{p=1} p{print} /^=== gpu_checks: rc=/{p=0}' "$LOG" >"$OUT/checks.log"

step telemetry_overhead 150 "$PY" tests/gpu/telemetry_overhead.py --device "$DEVICE" --repeats 3 --budget-s 110 \
    --launch-timeout-s 40 --json "$OUT/overhead.json"

MATRIX_S=$(($(left) - 15))
rm -rf /tmp/kedge-gpu-matrix
step nccl_fault_matrix "$((MATRIX_S + 10))" "$PY" tests/gpu/nccl_fault_matrix.py --device "$DEVICE" \
    --faults sigkill,sigstop,gpuhang,cudaerror,desync,straggler --repeats 1 --budget-s "$MATRIX_S" \
    --baseline --baseline-pg-timeout-s 20 --baseline-deadline-s 150 \
    --workdir /tmp/kedge-gpu-matrix --json "$OUT/matrix.json"
tar -czf "$OUT/matrix-logs.tar.gz" --exclude=ckpt -C /tmp kedge-gpu-matrix 2>/dev/null || true

echo "=== run_all.sh done in $((SECONDS - START)) s" | tee -a "$LOG"
# the tables, for the reply's output tail
awk '/^machine: |^field |^CUDA_DEVICE_MAX_CONNECTIONS|^fault |^=== /{p=1} /^$/{p=0} p' "$LOG"
