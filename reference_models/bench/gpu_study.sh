#!/usr/bin/env bash
# The study on one GPU, in pieces of at most 10 minutes (each piece continues the last: every finished
# run is read back, an interrupted one resumes from its checkpoint):
#
#   OUT=results bash reference_models/bench/gpu_study.sh [TESTS=1] [SECONDS_LEFT=570]
#
# TESTS=1 also runs `pytest -m gpu` alongside (its log in $OUT). The study itself:
#   python3 -m minisft compare --preset study --seeds 3 --tf32 --backend cupy
# then `minisft claims` and the Markdown table. Every step's wall time goes to $OUT/study-times.txt.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a folder for the logs}
WORK=${WORK:-/tmp/minisft-study}
BUDGET=${SECONDS_LEFT:-570}
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/study-times.txt"; }
stamp "start: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/study-times.txt"
if [ "${TESTS:-0}" = 1 ]; then
  ( timeout 400 python3 -m pytest -m gpu -q -p no:cacheprovider tests --ignore=tests/test_distributed.py \
      --ignore=tests/test_data_parallel.py > "$OUT/pytest-gpu.log" 2>&1; echo "rc=$?" >> "$OUT/pytest-gpu.log" ) &
fi
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
timeout "$LEFT" python3 -m minisft compare --preset study --seeds 3 --tf32 --backend cupy --workdir "$WORK" \
  --markdown > "$OUT/study-compare.txt" 2> "$OUT/study-progress.txt"
RC=$?
stamp "compare rc=$RC"
if [ $RC = 0 ]; then
  # a table of 3 seeds is compare-seeds3.* (tables of other seed counts never share a file)
  python3 -m minisft claims "$WORK"/runs/study-prose/compare-seeds3.json --markdown > "$OUT/study-claims.md"
  cp "$WORK"/runs/study-prose/compare-seeds3.json "$OUT/study-compare.json"
  cp "$WORK"/runs/study-prose/compare-seeds3-timings.json "$OUT/study-compare-timings.json"
  cp "$WORK"/runs/study-prose/compare-seeds3.png "$OUT/study-compare.png" 2>/dev/null
fi
grep -E "phase|done in|pretrain|tokenizer" "$OUT/study-progress.txt" | tail -60 >> "$OUT/study-times.txt"
wait
[ -f "$OUT/pytest-gpu.log" ] && tail -5 "$OUT/pytest-gpu.log" >> "$OUT/study-times.txt"
stamp end
