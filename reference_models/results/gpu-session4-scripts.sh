# ===== run_gpu1.sh (device call 1, 2026-11-27; OUT is the device's output folder)
#!/usr/bin/env bash
# session script (untracked): GPU tests + DP tests + set-up line + planted copy_many bug, then bench_dp
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
L=$OUT/logs; mkdir -p $L
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/summary1.txt; }
stamp start; nvidia-smi --query-gpu=index,name --format=csv,noheader | tee -a $OUT/summary1.txt
python3 -c "import cupy, torch, numpy; print('cupy', cupy.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)" | tee -a $OUT/summary1.txt
# (1) non-distributed GPU tests on GPU 0, in the background
( CUDA_VISIBLE_DEVICES=0 timeout 330 python3 -m pytest -m gpu -q -p no:cacheprovider tests \
    --ignore=tests/test_distributed.py --ignore=tests/test_data_parallel.py > $L/pytest-gpu.log 2>&1; echo "rc=$?" >> $L/pytest-gpu.log ) &
P1=$!
# (2) GPU set-up line (no network there: --no-index against the preinstalled wheels) + a tiny compare on the GPU
( set -x; python3 -m venv --system-site-packages /tmp/v && /tmp/v/bin/pip install -q --no-index --no-build-isolation '.[plot,gpu-cuda13]' \
  && cd /tmp && CUDA_VISIBLE_DEVICES=3 timeout 200 /tmp/v/bin/minisft compare --preset tiny --workdir /tmp/wsetup --quiet \
  && python3 -c "import json,glob; d=json.load(open(glob.glob('/tmp/wsetup/runs/*/compare.json')[0])); print('compare.json backend:', d.get('backend'), d.get('device'), 'rows', len(d['rows']))"; echo "rc=$?" ) > $L/setup-line.log 2>&1 &
P2=$!
# (3) planted bug: copy_many copies one element too few; the GPU pack test must fail
( rm -rf /tmp/planted && mkdir /tmp/planted && cp -r minisft tests reference_models setup.cfg /tmp/planted/ && cd /tmp/planted \
  && sed -i 's/for (long long i = start + threadIdx.x; i < end; i += blockDim.x) dst\[i\] = src\[i\];/for (long long i = start + threadIdx.x; i < end - 1; i += blockDim.x) dst[i] = src[i];/' minisft/gpu/kernels.py \
  && grep -c "i < end - 1; i += blockDim.x) dst" minisft/gpu/kernels.py && CUDA_VISIBLE_DEVICES=2 PYTHONPATH=/tmp/planted timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider \
     tests/test_distributed.py -k on_the_gpu -x 2>&1 | tail -5; \
  cd $OLDPWD && CUDA_VISIBLE_DEVICES=2 timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_distributed.py -k on_the_gpu 2>&1 | tail -3 ) > $L/planted-copy-many.log 2>&1 &
P3=$!
# (4) DP GPU tests (all 4 GPUs) in the foreground
OUT=$L/dp PARTS="a" bash reference_models/dp_gpu_check.sh > $L/dp-a.out 2>&1
stamp "dp part a done: $(grep a-gpu-tests $L/dp/summary.txt)"
wait $P1; stamp "pytest-gpu: $(tail -2 $L/pytest-gpu.log | tr '\n' ' ')"
wait $P2; stamp "setup line: $(tail -3 $L/setup-line.log | tr '\n' ' ')"
wait $P3; stamp "planted copy_many (first must FAIL, second pass): $(tr '\n' ' ' < $L/planted-copy-many.log | tail -c 600)"
# (5) bench_dp alone on the machine
OUT=$L/dp PARTS="c" bash reference_models/dp_gpu_check.sh > $L/dp-c.out 2>&1
stamp "bench done"; sed -n '/^method /,$p' $L/dp/c-bench-dp.log >> $OUT/summary1.txt
cp $L/dp/bench-dp-gpt2.json $OUT/ 2>/dev/null
tail -40 $L/dp/a-gpu-tests.log > $OUT/a-gpu-tests-tail.txt
grep -E "passed|failed|FAILED|Error" $L/pytest-gpu.log | tail -20 > $OUT/pytest-gpu-tail.txt
tar czf $OUT/logs1.tar.gz -C $OUT logs
rm -rf $L
stamp end
# ===== run_gpu2.sh (device call 2, 2026-11-27; OUT is the device's output folder)
#!/usr/bin/env bash
# session script (untracked): DP GPU tests (a) with the polling wait, GPU set-up line, then compare --gpus (b)
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
L=$OUT/logs; mkdir -p $L
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/summary2.txt; }
stamp start
# GPU set-up line in a fresh venv; no network there, so --no-index against the machine's preinstalled packages
# (made visible to the venv by a .pth file: the machine's python3 is itself a venv, /opt/torch/.venv)
( set -x; SITE=$(python3 -c "import site; print(site.getsitepackages()[0])"); python3 -m venv /tmp/v \
  && echo "$SITE" > $(/tmp/v/bin/python -c "import site; print(site.getsitepackages()[0])")/machine-packages.pth \
  && /tmp/v/bin/python -m pip install -q --no-index --no-build-isolation '.[plot,gpu-cuda13]' \
  && /tmp/v/bin/python -m pip show cupy-cuda13x matplotlib | grep -E "^(Name|Version)" \
  && cd /tmp && CUDA_VISIBLE_DEVICES=3 timeout 200 /tmp/v/bin/minisft compare --preset tiny --workdir /tmp/wsetup --quiet \
  && /tmp/v/bin/python -c "import json,glob; p=glob.glob('/tmp/wsetup/runs/*/compare.json')[0]; d=json.load(open(p)); print(p, {k: d[k] for k in d if k in ('backend','device','dtype')}, 'rows', len(d['rows']))" \
  && ls -la /tmp/wsetup/runs/*/compare.png; echo "rc=$?" ) > $L/setup-line.log 2>&1 &
P2=$!
OUT=$L/dp PARTS="a" bash reference_models/dp_gpu_check.sh > $L/dp-a.out 2>&1
stamp "dp part a: $(grep a-gpu-tests $L/dp/summary.txt)"
grep -E "passed|failed|FAILED" $L/dp/a-gpu-tests.log | tail -8 >> $OUT/summary2.txt
wait $P2; stamp "setup line: $(tail -6 $L/setup-line.log | tr '\n' ' ')"
OUT=$L/dp PARTS="b" bash reference_models/dp_gpu_check.sh > $L/dp-b.out 2>&1
stamp "dp part b:"; grep -E "^b-" $L/dp/summary.txt >> $OUT/summary2.txt
tail -60 $L/dp/a-gpu-tests.log > $OUT/a-gpu-tests-tail.txt
tar czf $OUT/logs2.tar.gz -C $OUT logs
stamp end
# ===== run_gpu3.sh (device call 3, 2026-11-27; OUT is the device's output folder)
#!/usr/bin/env bash
# session script (untracked): GPU tests (distributed, data-parallel incl. overlap, new kernels + planted bug),
# then compare --gpus identity (b), then bench_dp overlap vs not
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
L=$OUT/logs; mkdir -p $L
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/summary3.txt; }
stamp start
( CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py tests/test_gmt_method.py tests/test_gmt_mask.py tests/test_nn_grad.py tests/test_model.py 2>&1 | tail -4
  rm -rf /tmp/planted && mkdir /tmp/planted && cp -r minisft tests reference_models setup.cfg /tmp/planted/ && cd /tmp/planted \
  && sed -i 's/for (long long i = j; i < end; ++i) acc += values/for (long long i = end - 1; i >= j; --i) acc += values/' minisft/gpu/kernels.py \
  && sed -i 's/        if (keep\[i\]) ++n;/        if (!keep[i]) ++n;/' minisft/gpu/kernels.py \
  && grep -c "i >= j; --i) acc\|if (!keep\[i\]) ++n" minisft/gpu/kernels.py && echo "planted (both must fail):" && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/planted timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py -k "scatter_add_rows_kernel or zero_dropped_count_kept" 2>&1 | tail -3 ) > $L/kernels.log 2>&1 &
P1=$!
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_distributed.py > $L/dist-gpu.log 2>&1 &
P2=$!
timeout 270 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_data_parallel.py > $L/dp-gpu.log 2>&1
stamp "data-parallel GPU tests: $(tail -1 $L/dp-gpu.log)"; grep -E "^FAILED|^E  " $L/dp-gpu.log | head -12 >> $OUT/summary3.txt
wait $P2; stamp "distributed GPU tests: $(tail -1 $L/dist-gpu.log)"; grep -E "^FAILED|^E  " $L/dist-gpu.log | head -12 >> $OUT/summary3.txt
wait $P1; stamp "kernels: $(tr '\n' ' ' < $L/kernels.log)"
OUT=$L/dp PARTS="b" bash reference_models/dp_gpu_check.sh > $L/dp-b.out 2>&1
stamp "dp part b:"; grep -E "^b-" $L/dp/summary.txt >> $OUT/summary3.txt
LEFT=$(( 585 - $(date +%s) + T0 ))
stamp "bench with ${LEFT} s"
timeout $LEFT python3 -m reference_models.bench_dp --preset gpt2 --world-size 1,2,4 --methods full spruft lora --steps 8 --warmup 2 \
   --phases --no-overlap --out $OUT/bench-dp-gpt2.json > $L/bench.log 2>&1
stamp "bench rc=$?"; sed -n '/^method /,$p' $L/bench.log >> $OUT/summary3.txt; tail -8 $L/bench.log > $OUT/bench-tail.txt
cp $L/dp-gpu.log $L/dist-gpu.log $OUT/ 2>/dev/null
tar czf $OUT/logs3.tar.gz -C $OUT logs && rm -rf $L
stamp end
# ===== run_gpu4.sh (device call 4, 2026-11-27; OUT is the device's output folder)
#!/usr/bin/env bash
# session script (untracked): single-GPU bench, TF32 then fp32, all four methods vs torch SDPA, one process each
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/summary4.txt; }
for prec in tf32 fp32; do
  flag=""; [ $prec = tf32 ] && flag="--tf32"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m reference_models.bench --preset gpt2 --backend cupy $flag --methods full spruft lora gmt \
     --variants sdpa --steps 10 --warmup 3 --out $OUT/bench-gpt2-$prec.json > $OUT/bench-$prec.log 2>&1
  stamp "$prec rc=$?"; tail -14 $OUT/bench-$prec.log >> $OUT/summary4.txt
done
stamp end
# ===== run_gpu5.sh (device call 5, 2026-11-27; OUT is the device's output folder)
#!/usr/bin/env bash
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 100 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gmt_mask.py -k "zero_where_dropped" --tb=long -x > $OUT/alone.log 2>&1
echo "alone rc=$?"; grep -E "passed|failed" $OUT/alone.log | tail -2
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py tests/test_gmt_method.py tests/test_gmt_mask.py -x --tb=long > $OUT/combined.log 2>&1
echo "combined rc=$?"; grep -E "passed|failed" $OUT/combined.log | tail -2
grep -n -E "^E |Falsifying|^g=|g=array|dtype|transpose=|seed=" $OUT/alone.log $OUT/combined.log | head -40
