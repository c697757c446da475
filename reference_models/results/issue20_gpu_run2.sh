#!/bin/bash
# Issue 20 part B, second device call: the new-kernel tests again (after the empty-block gemm fix), the
# TF32 bench of this branch once more with 12 steps, the piece-by-piece costs (TF32), an fp32 profile.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-200}
left() { [ $((LIMIT - SECONDS)) -gt "$1" ]; }
stage() { echo "== $(date +%T) t=${SECONDS}s $*"; }
{
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
stage "tests (new kernels)"
timeout 75 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py -k "not flash_attention and not tf32" \
  > $OUT/tests2.log 2>&1; echo "tests rc=$?"; tail -4 $OUT/tests2.log
if left 110; then stage "bench TF32, this branch, 12 steps"
  timeout 80 python3 -m reference_models.bench --preset gpt2 --backend cupy --tf32 --methods full spruft lora gmt \
    --variants sdpa --steps 12 --warmup 2 --out $OUT/bench2-tf32.json 2>&1 | grep -v Warning; fi
if left 35; then stage "pieces TF32"
  CUPY_TF32=1 timeout 40 python3 reference_models/results/issue20_pieces.py --out $OUT/pieces-tf32.json 2>&1 | grep -v Warning; fi
if left 25; then stage "profile fp32, this branch"
  timeout $((LIMIT - SECONDS - 3)) python3 -m reference_models.profile_step --preset gpt2 --methods full spruft --steps 2 \
    --out $OUT/profile-fp32.json 2>&1 | grep -v Warning; fi
stage end
} 2>&1 | tee $OUT/run2.log
