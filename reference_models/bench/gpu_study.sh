#!/usr/bin/env bash
# The study on one GPU, in pieces of at most 10 minutes (each piece continues the last: every finished
# run is read back, an interrupted one resumes from its checkpoint):
#
#   OUT=results [TESTS=1] [SECONDS_LEFT=570] bash reference_models/bench/gpu_study.sh
#
# (PRESET, BACKEND, EXTRA and STEPS change the preset, the backend, the extra options and the
# fine-tuning steps: PRESET=tiny BACKEND=numpy EXTRA= STEPS=5 rehearses it on a CPU.)
#
# The base model is pretrained once (`minisft pretrain --preset study --tf32`), then the rows run as
# three `minisft compare --preset study --seeds 3 --tf32 --only ...` processes side by side on the
# one GPU (each in a copy of the work folder: an experiment folder takes one compare at a time), and
# a last `minisft compare` in the first folder, holding every row's runs, reads them back and writes
# the table, the claims and the plot (the three print their progress, so a piece cut by the time limit
# shows how far it got). TESTS=1 also runs `pytest -m gpu` alongside. Wall times go to
# $OUT/study-times.txt.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a folder for the logs}
WORK=${WORK:-/tmp/minisft-study}
BUDGET=${SECONDS_LEFT:-570}
PRESET=${PRESET:-study}
COMMON="--preset $PRESET --backend ${BACKEND:-cupy} ${EXTRA:---tf32} --quiet"
ROWS=("full lora spruft loradrop gmt-d0.2"
      "adapeft gmt-d0.5 mgpp-s80 magprune-s80 mgpp-s90-reach"
      "mgpp-s90 mgpp-s95 mgpp-s90-anneal magprune-s90 magprune-s95")
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/study-times.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stamp "start: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/study-times.txt"
if [ "${TESTS:-0}" = 1 ]; then
  ( timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider tests --ignore=tests/test_distributed.py \
      --ignore=tests/test_data_parallel.py > "$OUT/pytest-gpu.log" 2>&1; echo "rc=$?" >> "$OUT/pytest-gpu.log" ) &
fi
timeout "$(left)" python3 -m minisft pretrain $COMMON --workdir "$WORK/0" >> "$OUT/study-pretrain.txt" 2>&1
stamp "pretrained: $(tail -1 "$OUT/study-pretrain.txt")"
for i in 1 2; do [ -d "$WORK/$i" ] || cp -a "$WORK/0" "$WORK/$i"; done
PARTS=()
for i in 0 1 2; do
  ( timeout "$(left)" python3 -m minisft compare ${COMMON/--quiet/} ${STEPS:+--steps $STEPS} --seeds 3 --workdir "$WORK/$i" --only ${ROWS[$i]} \
      > "$OUT/study-part$i.txt" 2>&1; echo "rc=$?" >> "$OUT/study-part$i.txt" ) &
  PARTS+=($!)
done
wait "${PARTS[@]}"
for i in 0 1 2; do stamp "part $i: $(tail -1 "$OUT/study-part$i.txt")"; done
EXP=runs/$PRESET-prose${STEPS:+-steps$STEPS}
for i in 1 2; do
  for run in "$WORK/$i/$EXP"/*/; do
    [ -d "$WORK/0/$EXP/$(basename "$run")" ] || cp -a "$run" "$WORK/0/$EXP/"
  done
done
timeout "$(left)" python3 -m minisft compare $COMMON ${STEPS:+--steps $STEPS} --seeds 3 --workdir "$WORK/0" --markdown \
  > "$OUT/study-compare.txt" 2>&1
RC=$?
stamp "compare of every row: rc=$RC"
if [ $RC = 0 ]; then
  cp "$WORK/0/$EXP/compare-seeds3.json" "$OUT/study-compare.json"
  cp "$WORK/0/$EXP/compare-seeds3-timings.json" "$OUT/study-compare-timings.json"
  cp "$WORK/0/$EXP/compare-seeds3.png" "$OUT/study-compare.png" 2>/dev/null
fi
wait
[ -f "$OUT/pytest-gpu.log" ] && stamp "pytest -m gpu: $(grep -E 'passed|failed' "$OUT/pytest-gpu.log" | tail -1)"
stamp end
