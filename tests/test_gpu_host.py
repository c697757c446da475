"""The host-side logic of the GPU code, on the CPU with stand-ins for CuPy (no GPU needed): the chunk
tables of the multi-tensor kernels (minisft.gpu.kernels._chunks), gemm's layout and argument checks
against an emulated column-major cuBLAS GEMM, and flash attention's choice of kernels and their
shared memory (variant, shared_bytes, supported) against the kernels' own source."""

import ctypes
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.gpu import flash_attention, kernels


@pytest.fixture
def fake_cupy(monkeypatch):
    """`import cupy` gives a stand-in whose arrays are NumPy's; its device is set per test."""
    device = SimpleNamespace(compute_capability="90", id=0, attributes={"MaxSharedMemoryPerBlockOptin": 232448})
    cupy = SimpleNamespace(asarray=np.asarray, device=device,
                           cuda=SimpleNamespace(Device=lambda device_id=None: device))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    kernels._chunks.cache_clear()
    flash_attention._supported.cache_clear()
    yield cupy
    kernels._chunks.cache_clear()
    flash_attention._supported.cache_clear()


# ------------------------------------------------------------------------------- chunk tables
@st.composite
def tensors_and_segments(draw):
    """Tensor sizes (0 included) and their non-decreasing segment ids from 0."""
    sizes = draw(st.lists(st.integers(0, 20), min_size=0, max_size=7))
    steps = draw(st.lists(st.integers(0, 1), min_size=len(sizes), max_size=len(sizes)))
    return tuple(sizes), tuple(int(s) for s in np.cumsum([0] + steps[1:])) if sizes else ()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])  # stateless stand-ins
@given(case=tensors_and_segments(), chunk=st.integers(1, 8), by_segment=st.booleans())
@example(case=((0, 5, 0, 9), (0, 0, 1, 1)), chunk=4, by_segment=True)  # empty tensors, a segment's first chunk later
def test_chunk_tables_cut_every_tensor_in_order(monkeypatch, fake_cupy, case, chunk, by_segment):
    """_chunks(sizes, segments) lists, chunk by chunk in (tensor, index) order, the tensor, the start
    and the segment of every `chunk`-element piece, each segment's first chunk, and every tensor's
    offset in the concatenation: against a loop over the tensors."""
    sizes, segments = case
    monkeypatch.setattr(kernels, "CHUNK", chunk)
    tab = kernels._chunks(sizes, segments if by_segment else None)
    segments = segments if by_segment else tuple(range(len(sizes)))
    pieces = [(t, start, segments[t]) for t, n in enumerate(sizes) for start in range(0, n, chunk)]
    assert tab.n_chunks == len(pieces)
    assert list(tab.tensor) == [p[0] for p in pieces] and list(tab.start) == [p[1] for p in pieces]
    assert list(tab.seg) == [p[2] for p in pieces] and list(tab.sizes) == list(sizes)
    assert tab.n_seg == (max(segments) + 1 if segments else 0)
    for s in range(tab.n_seg):
        own = [c for c, p in enumerate(pieces) if p[2] == s]
        if own:  # a segment whose tensors are all empty has no chunk that reads its entry
            assert tab.first[s] == own[0], f"segment {s}"
    assert list(tab.offsets) == [sum(sizes[:t]) for t in range(len(sizes))] and tab.total == sum(sizes)
    kernels._chunks.cache_clear()


# ------------------------------------------------------------------------------------- gemm
class HostArray(np.ndarray):
    """A NumPy array with CuPy's `.data.ptr` (its host address)."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)


def _at(address, shape, ld, dtype):
    """The column-major (rows, cols) matrix with leading dimension ld at a host address (writable)."""
    rows, cols = shape
    itemsize = np.dtype(dtype).itemsize
    raw = np.ctypeslib.as_array((ctypes.c_char * (((cols - 1) * ld + rows) * itemsize)).from_address(address))
    return np.lib.stride_tricks.as_strided(raw.view(dtype), shape, (itemsize, ld * itemsize))


class EmulatedCublas:
    """cuBLAS's gemmEx on host memory, column-major as documented: C = α op(A) op(B) + β C (C not read
    when β = 0), op(A) (m, k), op(B) (k, n); lda ≥ max(1, rows of A as stored) and likewise ldb, ldc ≥
    max(1, m), else CUBLAS_STATUS_INVALID_VALUE."""

    CUDA_R_32F, CUDA_R_64F = 0, 1
    CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_32F_PEDANTIC = 10, 11, 12
    CUBLAS_COMPUTE_64F, CUBLAS_COMPUTE_64F_PEDANTIC = 13, 14

    def __init__(self):
        self.calls = []

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type, ldc,
               compute, algo):
        dtype = {self.CUDA_R_32F: np.float32, self.CUDA_R_64F: np.float64}[a_type]
        assert a_type == b_type == c_type and min(m, n, k) >= 1
        a_shape, b_shape = ((k, m) if transa else (m, k)), ((n, k) if transb else (k, n))
        if lda < max(1, a_shape[0]) or ldb < max(1, b_shape[0]) or ldc < max(1, m):
            raise RuntimeError(f"CUBLAS_STATUS_INVALID_VALUE: lda {lda}, ldb {ldb}, ldc {ldc}")
        op_a, op_b = _at(A, a_shape, lda, dtype), _at(B, b_shape, ldb, dtype)
        op_a, op_b = (op_a.T if transa else op_a), (op_b.T if transb else op_b)
        c = _at(C, (m, n), ldc, dtype)
        al, be = (_at(p, (1, 1), 1, dtype)[0, 0] for p in (alpha, beta))
        c[...] = al * (op_a @ op_b) + (be * c if be != 0 else 0)
        self.calls.append((transa, transb, m, n, k, lda, ldb, ldc, compute))


@pytest.fixture
def emulated_gemm(monkeypatch):
    """kernels.gemm with CuPy's pieces stood in for: HostArray arrays and the emulated cuBLAS."""
    blas = EmulatedCublas()

    def empty(shape, dtype):
        return np.empty(shape, dtype=dtype).view(HostArray)

    cupy = SimpleNamespace(empty=empty, ascontiguousarray=lambda a: np.ascontiguousarray(a).view(HostArray),
                           cuda=SimpleNamespace(device=SimpleNamespace(get_cublas_handle=lambda: 0)))
    linalg = SimpleNamespace(get_compute_type=lambda dtype: 0, COMPUTE_TYPE_TF32=1, COMPUTE_TYPE_PEDANTIC=2)
    runtime = SimpleNamespace(CUDA_R_32F=blas.CUDA_R_32F, CUDA_R_64F=blas.CUDA_R_64F)
    monkeypatch.setattr(kernels, "_cublas", lambda: (cupy, linalg, runtime, blas, 0))
    return blas


def _operand(rng, shape, layout, dtype):
    """An integer-valued matrix of `shape` laid out as: "c" contiguous, "t" a transposed view, "block"
    a column block of a wider array (rows not adjacent), "strided" every other column (no
    contiguous rows), "empty-odd" (empty only) with strides no row layout has."""
    rows, cols = shape
    values = rng.integers(-8, 9, shape).astype(dtype)
    if layout == "t":
        return np.ascontiguousarray(values.T).view(HostArray).T
    if layout == "block":
        wide = rng.integers(-8, 9, (rows, cols + 3)).astype(dtype).view(HostArray)
        wide[:, 1:1 + cols] = values
        return wide[:, 1:1 + cols]
    if layout == "strided":
        wide = np.zeros((rows, 2 * cols), dtype).view(HostArray)
        wide[:, ::2] = values
        return wide[:, ::2]
    if layout == "empty-odd" and values.size == 0:
        return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0, 7 * values.itemsize)).view(HostArray)
    return values.view(HostArray)


LAYOUTS = st.sampled_from(["c", "t", "block", "strided", "empty-odd"])


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])  # calls counted per draw
@given(M=st.integers(0, 6), N=st.integers(0, 6), K=st.integers(0, 6), trans_a=st.booleans(), trans_b=st.booleans(),
       alpha=st.sampled_from([1.0, -2.0]), beta=st.sampled_from([0.0, 1.0, -0.5]), dtype=st.sampled_from(["float32", "float64"]),
       layouts=st.tuples(LAYOUTS, LAYOUTS, st.sampled_from(["c", "block", "empty-odd"])), new_out=st.booleans(),
       seed=st.integers(0, 2**16))
@example(M=0, N=2, K=0, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, dtype="float32",
         layouts=("c", "c", "empty-odd"), new_out=False, seed=0)  # an empty column block (failed on an H100)
@example(M=3, N=5, K=0, trans_a=True, trans_b=False, alpha=1.0, beta=-0.5, dtype="float64",
         layouts=("empty-odd", "c", "block"), new_out=False, seed=1)  # an empty sum: out = beta·out
def test_gemm_lays_out_its_operands_for_cublas(emulated_gemm, M, N, K, trans_a, trans_b, alpha, beta, dtype,
                                              layouts, new_out, seed):
    """kernels.gemm through an emulated column-major cuBLAS equals alpha·op(a) op(b) + beta·out (NumPy,
    integer values: exact), for operands laid out contiguously, transposed, as column blocks, with
    non-contiguous rows (copied first), and empty with any strides; out a column block of a wider
    array whose other columns stay as they were. Every leading dimension handed to cuBLAS is one it
    accepts."""
    rng = np.random.default_rng(seed)
    calls_before = len(emulated_gemm.calls)
    a = _operand(rng, (K, M) if trans_a else (M, K), layouts[0], dtype)
    b = _operand(rng, (N, K) if trans_b else (K, N), layouts[1], dtype)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    want = alpha * (np.asarray(op_a, np.float64) @ np.asarray(op_b, np.float64))
    if new_out:
        got = kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    else:
        out = _operand(rng, (M, N), layouts[2], dtype)
        base = np.asarray(out.base if out.base is not None else out).copy()
        want = want + (beta * np.asarray(out, np.float64) if beta else 0)
        got = kernels.gemm(a, b, out=out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
        assert got is out
        if layouts[2] == "block" and out.size:
            np.testing.assert_array_equal(np.asarray(out.base)[:, [0, N + 1, N + 2]], base[:, [0, N + 1, N + 2]])
    assert got.shape == (M, N) and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(got, np.float64), want)
    assert len(emulated_gemm.calls) - calls_before == (1 if M and N and K else 0)


@pytest.mark.parametrize("case, match", [
    (lambda: (np.ones((2, 3)), np.ones((4, 2)), None), r"op\(a\) \(2, 3\) @ op\(b\) \(4, 2\)"),  # K mismatch
    (lambda: (np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 3))), r"into \(2, 3\)"),  # out of the wrong shape
    (lambda: (np.ones((2, 3)), np.ones((3, 2), np.float32), None), "float32"),  # mixed dtypes
    (lambda: (np.ones((2, 3), np.int64), np.ones((3, 2), np.int64), None), "int64"),  # not a float type
    (lambda: (np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 4))[:, ::2]), "rows contiguous: False"),  # out's rows
])
def test_gemm_refuses_what_cublas_cannot_take(emulated_gemm, case, match):
    """gemm's checks: inner dimensions, out's shape, one float dtype, out's rows contiguous: a
    ValueError naming the shapes, dtypes and layout, before anything reaches cuBLAS."""
    a, b, out = (None if x is None else x.view(HostArray) for x in case())
    with pytest.raises(ValueError, match=match):
        kernels.gemm(a, b, out=out)
    assert not emulated_gemm.calls


# ------------------------------------------------------------------------ flash attention
def _kernel_bodies():
    """{(kernel, variant family): source text of its body}: "cuda" (the fp32/fp64 template) or "tf32"."""
    src = flash_attention._SOURCE
    cuda_part, tf32_part = src.split("#ifndef TF32", 1)[1].split("#else", 1)
    bodies = {}
    for family, part, names in (("cuda", cuda_part, ("flash_forward(", "flash_backward_dkdv(", "flash_backward_dq(")),
                                ("tf32", tf32_part, ("flash_forward_tf32(", "(flash_backward_dkdv_tf32)",
                                                     "(flash_backward_dq_tf32)"))):
        starts = [part.index(n) for n in names] + [len(part)]
        for kernel, a, b in zip(flash_attention._KERNELS, starts, starts[1:]):
            bodies[kernel, family] = part[a:b]
    return bodies


def _elements_from_source(body, hd):
    """The dynamic shared memory a kernel body carves out of `smem`, in elements: its pointer chain
    (`*sX = smem`, `*sY = sX + BT * LD`, ...) gives each buffer's offset; its use gives its extent
    (load_tile: a (BT, LD) tile, load_vec: BT entries, indexed by `* LP`: a (BT, LP) tile)."""
    defines = dict(re.findall(r"#define (BT) (\d+)", flash_attention._SOURCE))
    BT = int(defines["BT"])
    size = {"BT * LD": BT * (hd + 4), "BT * LP": BT * (BT + 4), "BT": BT}
    offset = {}
    for name, base, step in re.findall(r"\*(s\w+) = (smem|s\w+)(?: \+ (BT \* LD|BT \* LP|BT))?", body):
        offset[name] = 0 if base == "smem" else offset[base] + size[step]
    assert offset, "no shared-memory pointer chain found"

    def extent(name):
        if re.search(rf"load_tile\({name}\b", body):
            return size["BT * LD"]
        if re.search(rf"load_vec\({name}\b", body):
            return size["BT"]
        if re.search(rf"{name}\[[^\]]*\* LP", body):
            return size["BT * LP"]
        raise AssertionError(f"cannot tell the extent of {name}")

    return max(offset[n] + extent(n) for n in offset)


@pytest.mark.parametrize("variant", ["f32", "f64", "tf32"])
@pytest.mark.parametrize("hd", [16, 32, 48, 64, 128, 256])
def test_shared_bytes_cover_what_each_kernel_carves_out(variant, hd):
    """shared_bytes(kernel, hd, variant) is exactly the shared memory the kernel's source uses: the
    end of its last buffer, in elements of 4 (f32, tf32) or 8 (f64) bytes."""
    bodies = _kernel_bodies()
    family = "tf32" if variant == "tf32" else "cuda"
    for kernel in flash_attention._KERNELS:
        want = _elements_from_source(bodies[kernel, family], hd) * (8 if variant == "f64" else 4)
        assert flash_attention.shared_bytes(kernel, hd, variant) == want, kernel


@pytest.mark.parametrize("cc, tf32, env, want32", [
    ("90", True, "0", "tf32"), ("80", None, "1", "tf32"), ("90", None, "0", "f32"), ("75", True, "1", "f32"),
    ("86", False, "1", "f32")])
def test_variant_picks_tf32_only_when_asked_and_the_device_has_it(monkeypatch, fake_cupy, cc, tf32, env, want32):
    """float64 always takes the f64 kernels; float32 the TF32 tiles when asked (tf32=True, or
    CUPY_TF32 > 0 when tf32 is None) on compute capability ≥ 8.0, else the f32 kernels."""
    fake_cupy.device.compute_capability = cc
    monkeypatch.setenv("CUPY_TF32", env)
    assert flash_attention.variant(np.dtype("float64"), tf32) == "f64"
    assert flash_attention.variant(np.dtype("float32"), tf32) == want32


def test_a_malformed_cupy_tf32_is_a_clear_error(monkeypatch, fake_cupy):
    monkeypatch.setenv("CUPY_TF32", "yes")
    with pytest.raises(ValueError, match="CUPY_TF32"):
        flash_attention.variant(np.dtype("float32"))


@pytest.mark.parametrize("limit", [232448, 166912, 101376, 98304, 49152])  # H100, A100, sm_86, V100, 48 KiB
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_supported_head_dims_fit_the_device(fake_cupy, limit, dtype):
    """supported(hd, dtype) on a device of `limit` bytes of opt-in shared memory per block: hd a
    positive multiple of 16 whose every kernel fits (by the source's own carve-up), in every variant
    that may run for the dtype (float32: f32 and TF32)."""
    fake_cupy.device.attributes["MaxSharedMemoryPerBlockOptin"] = limit
    bodies = _kernel_bodies()
    variants = ["f64"] if dtype == "float64" else ["f32", "tf32"]
    for hd in range(1, 300):
        fits = all(_elements_from_source(bodies[k, "tf32" if v == "tf32" else "cuda"], hd) * (8 if v == "f64" else 4) <= limit
                   for k in flash_attention._KERNELS for v in variants) if hd % 16 == 0 else False
        assert flash_attention.supported(hd, np.dtype(dtype)) == fits, f"hd {hd}"
