"""Data parallelism is exact (minisft.distributed.data_parallel): N ranks compute what one process
computes on the same global batch.

In-process: the row shards partition the batch; `grad_scale` scales exactly the backward; the
weighted shares of N simulated ranks (a Communicator of world size N whose collectives do nothing,
summed here by hand) add up to the single process's loss and gradients; ignored targets are
refused; the replica digest sees one flipped bit. Under `mpiexec -n 2` (tests/data_parallel_worker.py):
every method's prepare() on 2 ranks equals the single process's — the same selections, masks, groups
and rows, statistics and parameters within 1e-10 — and both ranks hold bit-identical replicas.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from minisft.backend import rng as make_rng
from minisft.distributed import Communicator, DistributedError
from minisft.distributed import data_parallel as dp
from minisft.errors import MinisftError
from tests.data_parallel_worker import PREPARE_CASES, tiny_model, tiny_task
from tests.test_distributed import _env, _mpiexec, gpus  # noqa: F401  (gpus: the fixture)

WORKER = Path(__file__).with_name("data_parallel_worker.py")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-10  # losses, parameters, statistics: 2 ranks vs 1 process, float64
FD_TOL = 1e-8  # AdaPEFT's finite-difference curvature estimates (tests/data_parallel_worker.py)


def _max_rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# ---------------------------------------------------------------------------------- the shards
@given(B=st.integers(1, 64), N=st.integers(1, 64))
@example(B=7, N=3)  # unequal shards
@example(B=4, N=4)  # one row each
def test_shard_rows_partition_the_batch_into_contiguous_near_equal_blocks(B, N):
    if B < N:
        with pytest.raises(MinisftError, match=f"batch_size={B}: expected at least one row per rank"):
            dp.shard_rows(B, 0, N)
        return
    shards = [dp.shard_rows(B, r, N) for r in range(N)]
    assert shards[0][0] == 0 and shards[-1][1] == B
    assert all(hi == lo for (_, hi), (lo, _) in zip(shards, shards[1:])), shards  # contiguous, no overlap
    sizes = [hi - lo for lo, hi in shards]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, sizes


def test_shard_rows_rejects_bad_ranks():
    with pytest.raises(MinisftError, match=r"rank=2: expected a rank in \[0, 2\)"):
        dp.shard_rows(8, 2, 2)
    with pytest.raises(TypeError, match="world_size"):
        dp.shard_rows(8, 0, 1.5)


# --------------------------------------------------------------------------------- grad_scale
def test_grad_scale_scales_every_gradient_and_not_the_loss():
    model = tiny_model()
    model.unfreeze()
    x, y = tiny_task().sample(make_rng(1))
    loss1, g1 = model.loss_and_grads(x, y)
    loss3, g3 = model.loss_and_grads(x, y, grad_scale=0.375)
    assert loss3 == loss1
    for k in g1:
        d = _max_rel(g3[k], 0.375 * g1[k])
        assert d <= 1e-15, f"{k}: max rel diff {d:.3e}"
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(MinisftError, match="grad_scale="):
            model.loss_and_grads(x, y, grad_scale=bad)


# ------------------------------------------------------------------------ simulated ranks
@given(B=st.integers(2, 9), N=st.integers(2, 5), seed=st.integers(0, 2**16))
@example(B=7, N=3, seed=0)  # shares 2/7, 2/7, 3/7
def test_weighted_shares_of_the_ranks_sum_to_the_single_process(B, N, seed):
    """Σ_r (w_r L_r, w_r ∇L_r) over N simulated ranks = (L, ∇L) of one process on the B rows: a
    missing weight (grad_scale) or overlapping shards break it by a factor, not by rounding."""
    if B < N:
        return
    model = tiny_model(seed=seed % 3)
    model.unfreeze()
    x, y = tiny_task(batch_size=B).sample(make_rng(seed))
    loss, grads = model.loss_and_grads(x, y)
    shares = [dp.local_loss_and_grads(model, x, y, Communicator(rank=r, world_size=N)) for r in range(N)]
    assert abs(sum(s[0] for s in shares) - loss) <= TOL
    for k in grads:
        d = _max_rel(sum(s[1][k] for s in shares), grads[k])
        assert d <= 1e-13, f"{k}: max rel diff {d:.3e}"
    forward = sum(dp.loss(model, x, y, Communicator(rank=r, world_size=N)) for r in range(N))
    assert abs(forward - loss) <= 1e-13


def test_mean_batch_loss_assigns_each_batch_to_one_rank():
    model, task = tiny_model(), tiny_task()
    batches = task.val_target + task.val_source  # 3 batches over 2 ranks: rank 0 gets 2, rank 1 gets 1
    single = dp.mean_batch_loss(model, batches)
    assert single == float(np.mean([model.loss(x, y) for x, y in batches]))
    summed = sum(dp.mean_batch_loss(model, batches, Communicator(rank=r, world_size=2)) for r in range(2))
    assert abs(summed - single) <= 1e-13
    assert dp.mean_batch_loss(model, []) is None


def test_ignored_targets_are_refused_when_ranks_share_a_batch():
    model = tiny_model()
    x, y = tiny_task().sample(make_rng(0))
    y = y.copy()
    y[0, 0] = -100
    with pytest.raises(MinisftError, match="targets=.*ignored entries.*world size 2"):
        dp.local_loss_and_grads(model, x, y, Communicator(rank=0, world_size=2))
    dp.local_loss_and_grads(model, x, y)  # one process: the mean over the valid targets, as always


def test_replica_digest_sees_one_flipped_bit_and_the_generator_state():
    arrays = {"w": np.linspace(0, 1, 7), "m": np.array([True, False])}
    gen = make_rng(3)
    d = dp.replica_digest(arrays, gen)
    assert dp.check_replicas(None, arrays, gen) == d == dp.replica_digest(dict(reversed(arrays.items())), make_rng(3))
    flipped = {"w": arrays["w"].copy(), "m": arrays["m"]}
    flipped["w"].view(np.int64)[3] ^= 1
    assert dp.replica_digest(flipped, gen) != d
    gen.random()
    assert dp.replica_digest(arrays, gen) != d


# ------------------------------------------------------------------------- MPI, two ranks
@pytest.fixture(scope="module")
def prepared():
    """{case: [result of rank 0, result of rank 1]} of one `mpiexec -n 2 ... prepare` job."""
    cmd = [_mpiexec(), "-n", "2", sys.executable, str(WORKER), "prepare"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return _results(r.stdout)


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_on_two_ranks_equals_one_process(prepared, case):
    """Selections (SPruFT rows/columns/groups, LoRA-drop kept/shared layers, AdaPEFT's chosen groups),
    every score and statistic, the adapters' initial values and the generator state: the same on
    each of 2 ranks as in one process; both ranks bit-identical."""
    _check_results({case: prepared.get(case, [])}, [case], "mpi", 2)


def test_check_replicas_names_the_differing_rank():
    class TwoRanks(Communicator):  # rank 1 reports another digest
        def _allgather_bytes(self, data):
            return [data, json.dumps("0" * 64).encode()]

    with pytest.raises(DistributedError, match="rank 1 differs from rank 0"):
        dp.check_replicas(TwoRanks(rank=0, world_size=2), {"w": np.ones(3)})


# ------------------------------------------------------------------------------------ GPUs
def _results(stdout):
    out = {}
    for line in stdout.splitlines():
        line = line.split("] ", 1)[1] if line.startswith("[") else line  # minisft launch's rank prefix
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            out[res["case"]] = res["ranks"]
    return out


def _check_results(results, cases, backend, world):
    assert set(results) == set(cases), f"results for {sorted(results)}, expected {sorted(cases)}"
    for case, ranks in results.items():
        assert len(ranks) == world, case
        for res in ranks:
            where = f"{case}, rank {res['rank']} ({res['backend']}, world {res['world_size']})"
            assert res["backend"] == backend, where
            assert res["differences"] == [], f"{where}: differs beyond rounding at {res['differences']}"
            assert res["max_rel_diff"] <= TOL, f"{where}: max rel diff {res['max_rel_diff']:.3e}"
            assert res["max_rel_diff_finite_difference"] <= FD_TOL, \
                f"{where}: finite-difference estimates max rel diff {res['max_rel_diff_finite_difference']:.3e}"
            assert res["replicas_agree"], f"{where}: the ranks' replicas differ"


@pytest.mark.gpu
@pytest.mark.parametrize("launcher", ["minisft-launch", "mpirun"])
@pytest.mark.parametrize("world", [2, 4])
def test_prepare_on_gpus_with_nccl_equals_one_gpu(gpus, world, launcher):
    """Every method's prepare() on `world` GPUs (NCCL, float64) equals one GPU's, started by
    `minisft launch` (TCP rendezvous) and by mpirun (MPI bootstrap)."""
    if world > gpus:
        pytest.skip(f"{world} GPUs asked, {gpus} visible")
    prefix = ([sys.executable, "-m", "minisft.launch", "--nproc", str(world), "--"] if launcher == "minisft-launch"
              else [_mpiexec(), "-n", str(world)])
    r = subprocess.run([*prefix, sys.executable, str(WORKER), "prepare", "cupy"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_results(_results(r.stdout), PREPARE_CASES, "nccl", world)


# ----------------------------------------------------------------------------- the benchmark
@pytest.mark.slow
def test_bench_dp_runs_on_two_cpu_ranks_and_counts_the_reduced_bytes(tmp_path):
    """reference_models.bench_dp end to end on the CPU (mpiexec + gloo): one row per implementation,
    method and world size; at N = 2 minisft all-reduces exactly the LoRA factors (r·(d_in + d_out)
    floats per linear layer) plus its 8-byte loss, DDP the same factors."""
    _mpiexec()
    out = tmp_path / "bench-dp.json"
    cmd = [sys.executable, "-m", "reference_models.bench_dp", "--backend", "numpy", "--preset", "tiny",
           "--world-size", "1,2", "--steps", "2", "--warmup", "1", "--methods", "lora", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(row["impl"], row["world_size"]): row for row in result["rows"]}
    assert set(rows) == {(impl, n) for impl in ("minisft", "torch-ddp") for n in (1, 2)}
    C, L, r_ = 64, 2, 8  # the tiny preset, LoRA r=8
    lora_floats = L * r_ * sum(d_in + d_out for d_out, d_in in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C)))
    assert rows[("minisft", 2)]["allreduce_bytes_per_step"] == 4 * lora_floats + 8
    assert rows[("torch-ddp", 2)]["allreduce_bytes_per_step"] == 4 * lora_floats
    assert rows[("minisft", 1)]["allreduce_bytes_per_step"] == 0
    assert set(result["scaling_efficiency"]) == {f"{i} lora N={n}" for i in ("minisft", "torch-ddp") for n in (1, 2)}
