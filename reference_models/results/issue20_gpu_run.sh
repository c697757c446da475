#!/bin/bash
# Issue 20 part B on a lent GPU, run from this checkout's root (the lead's main checkout is ../..):
#   bash issue20_gpu_run.sh 1   (first call) new-kernel GPU tests, planted bugs, this branch's bench in TF32
#                               and fp32, main's minisft rows (this bench.py, main's package), TF32 profile
#   bash issue20_gpu_run.sh 2   (second call) the tests again, the TF32 bench again with 12 steps, the pieces
#                               (issue20_pieces.py) and an fp32 profile
# Writes at most 8 files under $OUT. Each stage is skipped once the call nears its end (LIMIT seconds).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
MAIN=$(cd ../.. && pwd)
CALL=${1:-1}
LIMIT=${LIMIT:-285}
left() { [ $((LIMIT - SECONDS)) -gt "$1" ]; }
stage() { echo "== $(date +%T) t=${SECONDS}s $*"; }
{
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
python3 -c "import cupy, torch, numpy; print('cupy', cupy.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"

stage "tests (new kernels; the flash-attention tests are untouched by this branch)"
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py -k "not flash_attention and not tf32" \
  > $OUT/tests$CALL.log 2>&1; echo "tests rc=$?"; tail -4 $OUT/tests$CALL.log
if [ "$CALL" = 2 ]; then
  if left 110; then stage "bench TF32, this branch, 12 steps"
    timeout 80 python3 -m reference_models.bench --preset gpt2 --backend cupy --tf32 --methods full spruft lora gmt \
      --variants sdpa --steps 12 --warmup 2 --out $OUT/bench2-tf32.json 2>&1 | grep -v Warning; fi
  if left 35; then stage "pieces TF32"
    CUPY_TF32=1 timeout 40 python3 reference_models/results/issue20_pieces.py --out $OUT/pieces-tf32.json 2>&1 | grep -v Warning; fi
  if left 25; then stage "profile fp32, this branch"
    timeout $((LIMIT - SECONDS - 3)) python3 -m reference_models.profile_step --preset gpt2 --methods full spruft --steps 2 \
      --out $OUT/profile-fp32.json 2>&1 | grep -v Warning; fi
  exit 0
fi

if left 200; then stage "bench TF32, this branch"
  timeout 70 python3 -m reference_models.bench --preset gpt2 --backend cupy --tf32 --methods full spruft lora gmt \
    --variants sdpa --steps 8 --warmup 2 --out $OUT/bench-tf32.json 2>&1 | grep -v Warning; fi
if left 150; then stage "bench fp32, this branch"
  timeout 80 python3 -m reference_models.bench --preset gpt2 --backend cupy --methods full spruft lora gmt \
    --variants sdpa --steps 8 --warmup 2 --out $OUT/bench-fp32.json 2>&1 | grep -v Warning; fi
if left 80; then stage "bench TF32, main's minisft (this bench.py, main's package)"
  (cd "$MAIN" && PYTHONPATH=. timeout 45 python3 "$OLDPWD/reference_models/bench.py" --preset gpt2 --backend cupy --tf32 \
    --methods full spruft lora gmt --variants --steps 8 --warmup 2 --out $OUT/main-tf32.json 2>&1 | grep -v Warning); fi
if left 45; then stage "profile TF32, this branch"
  timeout 40 python3 -m reference_models.profile_step --preset gpt2 --tf32 --methods spruft lora full gmt --steps 2 \
    --out $OUT/profile-tf32.json 2>&1 | grep -v Warning; fi
if left 25; then stage "planted bugs (each must make its test fail)"
  plant() {  # name, file, python replacement (old ||| new), test
    d=/tmp/plant-$1; rm -rf $d; cp -r . $d
    python3 - "$d/$2" "$3" <<'PY'
import sys
path, spec = sys.argv[1], sys.argv[2]
old, new = spec.split("|||")
s = open(path).read()
assert s.count(old) == 1, (path, old)
open(path, "w").write(s.replace(old, new))
PY
    (cd $d && timeout 20 python3 -m pytest -m gpu -q -x -p no:cacheprovider "$4" > /tmp/plant-$1.log 2>&1)
    rc=$?; echo "plant $1: rc=$rc ($([ $rc -ne 0 ] && echo caught || echo MISSED)) $(grep -E '^(FAILED|ERROR)' /tmp/plant-$1.log | head -1 | cut -c1-150)"
  }
  plant tie-rank minisft/gpu/kernels.py "out[i] = !(key < target || (tie && r1 <= need));|||out[i] = !(key < target || (tie && r1 < need));" \
    "tests/test_kernels.py::test_select_kernels_equal_oracle[True-float32-64]" &
  plant bias minisft/gpu/kernels.py "        if (has_b) v += b[j];|||" "tests/test_kernels.py::test_gather_scatter_columns_kernels" &
  plant adam-scal minisft/gpu/kernels.py "T step = scal[2 * t], sbc2 = scal[2 * t + 1];|||T step = scal[2 * t + 1], sbc2 = scal[2 * t];" \
    "tests/test_kernels.py::test_adamw_many_tensors_one_launch" &
  plant lora-alpha minisft/model/adapters/lora.py "d_B = kernels.gemm(dy2, cache_b.x2, trans_a=True, alpha=s)|||d_B = kernels.gemm(dy2, cache_b.x2, trans_a=True)" \
    "tests/test_kernels.py::test_fused_adapters_equal_plain_bodies[lora-float32]" &
  wait
fi > $OUT/plants.log 2>&1; cat $OUT/plants.log
if left 20; then stage "bench fp32, main's minisft"
  (cd "$MAIN" && PYTHONPATH=. timeout $((LIMIT - SECONDS - 5)) python3 "$OLDPWD/reference_models/bench.py" --preset gpt2 \
    --backend cupy --methods full spruft lora gmt --variants --steps 6 --warmup 2 --out $OUT/main-fp32.json 2>&1 | grep -v Warning); fi
stage "table"
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
for name in ("bench-tf32", "main-tf32", "bench-fp32", "main-fp32"):
    try:
        r = json.load(open(f"{out}/{name}.json"))
    except Exception as e:
        print(name, "missing", type(e).__name__); continue
    by = {(x["method"], x["impl"]): x for x in r["rows"]}
    full = by.get(("full", "minisft"), {}).get("ms_per_step")
    cells = []
    for m in ("full", "spruft", "lora", "gmt"):
        x = by.get((m, "minisft"))
        if x:
            t = by.get((m, "torch-sdpa"))
            cells.append(f"{m} {x['ms_per_step']:.1f}" + (f" ({x['ms_per_step'] / full:.3f}x full" if full else "") +
                         (f", {x['ms_per_step'] / t['ms_per_step']:.3f}x sdpa {t['ms_per_step']:.1f})" if t else ")") +
                         (f" {x['peak_bytes'] / 2**30:.2f}GiB" if x.get("peak_bytes") else ""))
    print(f"{name:11s} " + " | ".join(cells))
PY
} 2>&1 | tee $OUT/run$CALL.log
