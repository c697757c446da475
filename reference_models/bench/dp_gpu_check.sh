#!/usr/bin/env bash
# Data-parallel checks and measurements on one multi-GPU host (issue 21), about 10 minutes on 4 H100s
# (run the parts in two calls where one call is limited to less). From the repository root, with
# python3 having cupy, mpi4py, torch and pytest:
#
#     OUT=/some/dir bash reference_models/bench/dp_gpu_check.sh       ($OUT defaults to ./dp-gpu-check)
#
# (a) the GPU-marked tests of tests/test_distributed.py and tests/test_data_parallel.py: the NCCL
#     collectives; every method's prepare() and 20 training steps on 2 GPUs (mpirun) and 4 GPUs
#     (minisft launch), NCCL, float64, against one GPU; resume 2 GPUs -> 1 and 1 -> 2;
# (b) `minisft compare --gpus N` against the serial compare on the `small` preset (pretrained base
#     cached first, untimed): both wall times, and whether compare.json is byte-identical;
# (c) reference_models.bench.data_parallel on the gpt2 preset, world sizes 1,2,4: minisft vs PyTorch DDP, per-GPU
#     batch 8 x 1024, full / spruft / lora, scaling efficiency and bytes all-reduced per step, and
#     minisft's step in phases (forward+backward, all-reduce, AdamW).
# Each part has its own time limit, logs to $OUT/<part>.log and does not stop the others; the summary
# comes last (and goes to $OUT/summary.txt). PARTS="a c" runs only those parts (default: a b c).
# minisft need not be installed: PYTHONPATH=. and `python3 -m minisft.app.cli` stand for the `minisft` command.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/dp-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# the lent machines run commands as root, which Open MPI's mpirun refuses unless told (seen 2026-11-27)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
PY=${PYTHON:-python3}
NGPU=$($PY -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())" 2>"$OUT/gpus.log" || echo 0)
BENCH_SIZES=1,2,4
[ "$NGPU" -lt 4 ] && BENCH_SIZES=1,$NGPU
SUMMARY=()
PARTS=${PARTS:-a b c}
want() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }

part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log, record rc and seconds
    local name=$1 limit=$2 t0 rc
    shift 2
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    LAST_SECONDS=$((ms / 1000)).$(printf '%03d' $((ms % 1000)))
    SUMMARY+=("$(printf '%-18s rc=%-3s %9s s   %s' "$name" "$rc" "$LAST_SECONDS" "$*")")
    return $rc
}

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; nvidia-smi topo -m; \
  $PY -c "import cupy, torch, mpi4py, numpy; print('cupy', cupy.__version__, 'nccl', cupy.cuda.nccl.get_version(), \
'torch', torch.__version__, 'mpi4py', mpi4py.__version__, 'numpy', numpy.__version__)"; } >"$OUT/machine.log" 2>&1

# (a) GPU tests: NCCL collectives, prepare() and training parity on 2 and 4 GPUs
want a && part a-gpu-tests 300 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_distributed.py tests/test_data_parallel.py

# (b) compare --gpus N vs serial, same compare.json
if want b; then
W1="$OUT/compare-serial" W2="$OUT/compare-gpus"
rm -rf "$W1" "$W2"
part b-pretrain 60 $PY -m minisft.app.cli pretrain --preset small --workdir "$W1" --quiet && cp -r "$W1" "$W2"
part b-compare-serial 120 $PY -m minisft.app.cli compare --preset small --workdir "$W1" --quiet
SERIAL=$LAST_SECONDS
part b-compare-gpus 60 $PY -m minisft.app.cli compare --preset small --workdir "$W2" --quiet --gpus "$NGPU"
PARALLEL=$LAST_SECONDS
C1=$(ls "$W1"/runs/*/compare.json 2>/dev/null | head -1) C2=$(ls "$W2"/runs/*/compare.json 2>/dev/null | head -1)
$PY - "${C1:-$W1/compare.json}" "${C2:-$W2/compare.json}" "$SERIAL" "$PARALLEL" "$NGPU" >"$OUT/b-compare-check.log" 2>&1 <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
same = open(sys.argv[1], "rb").read() == open(sys.argv[2], "rb").read()
worst = 0.0
def walk(x, y):
    global worst
    if isinstance(x, dict):
        assert set(x) == set(y), sorted(set(x) ^ set(y))
        for k in x: walk(x[k], y[k])
    elif isinstance(x, list):
        assert len(x) == len(y)
        for u, v in zip(x, y): walk(u, v)
    elif isinstance(x, float):
        worst = max(worst, abs(x - y) / max(1.0, abs(y)))
    else:
        assert x == y, (x, y)
walk(a, b)
serial, parallel = float(sys.argv[3]), float(sys.argv[4])
print(f"compare.json byte-identical: {same}; max rel diff of its numbers {worst:.3e}; rows {len(a['rows'])}")
print(f"wall time: serial {serial:.1f} s, --gpus {sys.argv[5]} {parallel:.1f} s, ratio {parallel / serial:.3f} (target <= 0.35)")
EOF
SUMMARY+=("$(printf '%-18s %s' b-compare-check "$(tr '\n' ' ' <"$OUT/b-compare-check.log")")")
fi

# (c) minisft vs PyTorch DDP, gpt2 preset, 1/2/4 GPUs
want c && part c-bench-dp 330 $PY -m reference_models.bench.data_parallel --preset gpt2 --world-size "$BENCH_SIZES" \
    --methods full spruft lora --steps 6 --warmup 2 --phases --no-overlap --out "$OUT/bench-dp-gpt2.json"

{
    echo "== dp_gpu_check summary ($NGPU GPUs; logs in $OUT)"
    head -2 "$OUT/machine.log" | tail -1
    printf '%s\n' "${SUMMARY[@]}"
    echo "-- (a) pytest"; tail -3 "$OUT/a-gpu-tests.log"
    echo "-- (c) bench_dp"; sed -n '/^method /,$p' "$OUT/c-bench-dp.log"
} | tee "$OUT/summary.txt"
