"""SPruFT's neuron importance scores and their selection (map: minisft/methods/spruft/__init__.py;
decisions: proofs/decisions.md §1; scores from structural pruning: Torch-Pruning, LLM-Pruner).

A linear layer is Y = X Wᵀ + b with W (d_out, d_in); X (N, d_in) and dY (N, d_out) are one batch
flattened over (B, T); the weight gradient is G = dYᵀ X. Row i of W is output neuron i. Scores:

    magnitude          s_i = Σ_j |W_ij|^p,  p ∈ {1, 2}                           row_magnitude
    Taylor (default)   s_i = Σ_j |W_ij G_ij|                                     row_taylor
    multivariable      s_i = |Σ_j W_ij G_ij| = |Σ_n dY_ni (X Wᵀ)_ni|             row_taylor(..., True),
                                                                                 row_taylor_streaming,
                                                                                 TaylorAccumulator
    OBD                s_i = Σ_j W_ij² F_ij,  F = (1/S) Σ_s G_s ⊙ G_s             row_obd,
                       (G_s the gradient of sample s's loss)                     per_sample_sq_grad_sum
    zeroth order       Ĝ = (1/K) Σ_k [(L(θ+εz_k) − L(θ−εz_k)) / 2ε] z_k,  z_k ~ N(0, I), then
                       row_taylor(W, Ĝ)                                          zeroth_order_gradient
    quantile mean      s_i = (1/Q) Σ_q quantile_q({S_c,i}_c),  q ∈ linspace(0, 1, Q)   quantile_mean
    wanda              s_i = Σ_j |W_ij| ‖X_j‖₂, ‖X_j‖₂ over the calibration tokens  row_wanda
                       (the norm without under/overflow)             square_sums_by_range,
                                                                     norms_from_square_sums
    random             s_i ~ U[0, 1) i.i.d.                                      random_scores

Column ("input feature") versions, used by the neuron mode (structure.py), are the row functions
applied to Wᵀ: col_magnitude, col_taylor, col_obd; col_wanda. Selection: top_rows (per layer),
global_threshold_rows (one threshold on scores normalised by normalize_by_layer_mean).
Derivations and the tests that check them: proofs/importance.md.
"""

import math

import numpy as np

from ...core.backend import array_module, rng as make_rng, to_device, to_numpy
from ...core.errors import NonFiniteLossError, bad_type, bad_value, boolean, positive_int, real_in, require

MAGNITUDE_P = (1, 2)


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _float_array(arg, a, ndim, meaning):
    """`a` after checking it is a NumPy/CuPy float array with `ndim` dimensions (None: at least one)
    and finite entries (a NaN or an infinity has no rank); `meaning` says which shape is expected."""
    if not (hasattr(a, "dtype") and hasattr(a, "shape")) or not np.issubdtype(a.dtype, np.floating):
        raise bad_type(arg, a, f"a NumPy or CuPy array of a floating dtype, {meaning}")
    require(a.ndim == ndim if ndim is not None else a.ndim >= 1, f"{arg}.shape", tuple(a.shape), meaning)
    _finite(arg, a)
    return a


def _like(arg, a, ref_arg, ref):
    """Check `a` has the shape and backend of `ref`."""
    shape, ref_shape = tuple(a.shape), tuple(ref.shape)
    require(shape == ref_shape, f"{arg}.shape", shape, f"{ref_arg}.shape {ref_shape}")
    require(
        array_module(a) is array_module(ref), arg, type(a).__module__, f"an array on the backend of {ref_arg}"
    )


def _finite(arg, a):
    """Raise if `a` holds a NaN or an infinity (one host synchronisation: the error must be raised here)."""
    xp = array_module(a)
    if not bool(xp.isfinite(a).all()):
        raise bad_value(arg, "an array with NaN or infinite entries", "finite values (NaN and infinities have no rank)")


def _scores(args, s):
    """The scores `s` after checking none overflowed: finite inputs can still give an infinite
    score (|W| ~ 1e200 squared), which would rank as the largest."""
    xp = array_module(s)
    if not bool(xp.isfinite(s).all()):
        raise bad_value(args, "inputs whose scores overflow to infinity", "values whose scores are finite numbers")
    return s


def _nonnegative(arg, a):
    """Raise if `a` (finite) holds a negative entry: a squared gradient or a norm cannot be negative."""
    if not bool(array_module(a).all(a >= 0)):
        raise bad_value(arg, "an array with negative entries", "non-negative values (squares and norms)")


def _count_in(arg, value, n):
    """`value` as an int after checking 1 <= value <= n."""
    value = positive_int(arg, value)
    require(value <= n, arg, value, f"at most {n}")
    return value


def _matrix(arg, W):
    return _float_array(arg, W, 2, "2-D (d_out, d_in)")


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------


def row_magnitude(W, p=2):
    """W (d_out, d_in) -> (d_out,): Σ_j |W_ij|^p for p in {1, 2}."""
    _matrix("W", W)
    if isinstance(p, bool) or p not in MAGNITUDE_P:
        raise bad_value("p", p, f"one of {MAGNITUDE_P}")
    xp = array_module(W)
    return _scores("W", xp.sum(W * W if p == 2 else xp.abs(W), axis=1))


def row_taylor(W, G, multivariable=False):
    """W, G (d_out, d_in) -> (d_out,): Σ_j |W_ij G_ij|, or |Σ_j W_ij G_ij| when `multivariable`.

    G is the weight gradient dYᵀX summed over the calibration batches (or a zeroth-order estimate).
    """
    _matrix("W", W)
    _matrix("G", G)
    _like("G", G, "W", W)
    xp = array_module(W)
    if boolean("multivariable", multivariable):
        return _scores("W, G", xp.abs(xp.einsum("ij,ij->i", W, G)))
    return _scores("W, G", xp.sum(xp.abs(W * G), axis=1))


def row_taylor_streaming(dY, Y_nobias):
    """dY, Y_nobias (..., d_out) -> (d_out,): the SIGNED sums Σ_n dY_ni (X Wᵀ)_ni.

    Y_nobias = X Wᵀ is the layer's output before the bias is added. Since
    Σ_j W_ij G_ij = Σ_j W_ij Σ_n dY_ni X_nj = Σ_n dY_ni (X Wᵀ)_ni, the multivariable Taylor score
    |Σ_j W_ij G_ij| is |Σ over calibration batches of this|: sum the signed outputs over batches
    FIRST, take the absolute value LAST (`TaylorAccumulator` does exactly that). Never forms a
    d_out×d_in buffer; memory O(N·d_out) for the elementwise product.

    Columns (neuron mode) are the same sums of other factors: Σ_i W_ij G_ij = Σ_n X_nj (dY W)_nj,
    i.e. row_taylor_streaming(dY W, X) with dY W the gradient reaching X through this layer only.
    """
    _float_array("dY", dY, None, "an array (..., d)")
    _float_array("Y_nobias", Y_nobias, None, "an array (..., d)")
    _like("Y_nobias", Y_nobias, "dY", dY)
    xp = array_module(dY)
    d = dY.shape[-1]
    return xp.einsum("nk,nk->k", dY.reshape(-1, d), Y_nobias.reshape(-1, d))


class TaylorAccumulator:
    """Multivariable Taylor scores streamed over calibration batches, without any d_out×d_in buffer.

        acc = TaylorAccumulator()
        for batch in calib: acc.update(dY, X @ W.T)       # or col: acc.update(dX, X), dX = dY W
        scores = acc.scores()                              # |Σ_batches Σ_n dY_ni (XWᵀ)_ni|

    The signed sums are accumulated and the absolute value is taken only in `scores()`: taking
    |·| per batch would score Σ_b |Σ_j W_ij G^(b)_ij| instead of |Σ_j W_ij Σ_b G^(b)_ij|.
    """

    def __init__(self):
        self.signed = None  # (d,) running signed sum; None before the first batch

    def update(self, dY, Y_nobias):
        """Add one batch: dY, Y_nobias (..., d)."""
        s = row_taylor_streaming(dY, Y_nobias)
        if self.signed is not None:
            d = self.signed.shape[0]
            require(s.shape[0] == d, "dY.shape[-1]", s.shape[0], f"{d} as in the earlier batches")
            s = self.signed + s
        self.signed = s
        return self

    def scores(self):
        """(d,): |accumulated signed sums|."""
        require(self.signed is not None, "TaylorAccumulator", "no batches", "at least one update() first")
        return array_module(self.signed).abs(self.signed)


def row_wanda(W, act_norm):
    """W (d_out, d_in), act_norm (d_in,) -> (d_out,): Σ_j |W_ij| · ‖X_j‖₂, Wanda's metric reduced
    over the input axis j (‖X_j‖₂ = sqrt(Σ_n X_nj²) over the calibration tokens: ActivationNormProbe,
    by square_sums_by_range and norms_from_square_sums)."""
    _matrix("W", W)
    _float_array("act_norm", act_norm, 1, f"1-D (d_in,) = ({W.shape[1]},)")
    require(act_norm.shape[0] == W.shape[1], "act_norm.shape", tuple(act_norm.shape), f"({W.shape[1]},), W's d_in")
    require(array_module(act_norm) is array_module(W), "act_norm", type(act_norm).__module__,
            "an array on the backend of W")
    _nonnegative("act_norm", act_norm)
    xp = array_module(W)
    return _scores("W, act_norm", xp.abs(W) @ act_norm)


# |x| ranges of the scaled square sums, per float width: (b, s) = below 2^-b (scaled by 2^s), between
# 2^-b and 2^b (unscaled), at or above 2^b (scaled by 2^-s). Each range's squares stay normal numbers
# and its sums of up to 2^20 tokens finite: float64 (500, 600), float32 (50, 96).
SQUARE_SUM_RANGES = {8: (500, 600), 4: (50, 96)}


def square_sums_by_range(x):
    """x (N, d) float32/64 -> (3, d): Σ_n over the tokens of (x_nj·2^s)² where |x_nj| < 2^-b, x_nj² where
    2^-b ≤ |x_nj| < 2^b, (x_nj·2^-s)² for the rest (|x_nj| ≥ 2^b, and NaN, which propagates)
    ((b, s) = SQUARE_SUM_RANGES[itemsize]).

    The three sums of a column are ‖X_j‖₂² split so that no square underflows or overflows (x² alone
    underflows to 0 below |x| ≈ 1.5e-162 in float64, 1e-19 in float32); each is an ordinary sum, so
    batches and data-parallel ranks add them as they come. `norms_from_square_sums` takes the root."""
    xp = array_module(x)
    b, s = SQUARE_SUM_RANGES[x.dtype.itemsize]
    a = xp.abs(x)
    low, high = 2.0**-b, 2.0**b
    out = xp.empty((3, x.shape[-1]), dtype=x.dtype)
    ranges = ((a < low, 2.0**s), ((a >= low) & (a < high), 1.0), (~(a < high), 2.0**-s))  # NaN, ±inf: the last
    for i, (part, scale) in enumerate(ranges):
        scaled = xp.where(part, x, 0) * x.dtype.type(scale)
        out[i] = xp.einsum("nj,nj->j", scaled, scaled)
    return out


def norms_from_square_sums(sq):
    """(3, d) square_sums_by_range -> (d,) ‖X_j‖₂ = sqrt(2^-2s·sq[0] + sq[1] + 2^2s·sq[2]), evaluated in
    the scale of the largest range present; the smaller ones enter by ldexp, and what that rounds to
    zero lies below 2^-70 (float64; float32: 2^-45) of the sum."""
    xp = array_module(sq)
    _, s = SQUARE_SUM_RANGES[sq.dtype.itemsize]
    small, mid, big = sq
    return xp.where(big != 0, xp.ldexp(xp.sqrt(big + xp.ldexp(mid, -2 * s) + xp.ldexp(small, -4 * s)), s),
                    xp.where(mid != 0, xp.sqrt(mid + xp.ldexp(small, -2 * s)), xp.ldexp(xp.sqrt(small), -s)))


def random_scores(n, rng):
    """(n,) host float64 scores drawn i.i.d. U[0, 1) with `rng.random(n)` (a numpy Generator): the
    released code's `random` importance (its kept rows are a uniformly random subset)."""
    n = positive_int("n", n)
    if not isinstance(rng, np.random.Generator):
        raise bad_type("rng", rng, "a numpy.random.Generator")
    return rng.random(n)


def row_obd(W, F):
    """W, F (d_out, d_in) -> (d_out,): Σ_j W_ij² F_ij, F = mean per-sample squared gradient."""
    _matrix("W", W)
    _matrix("F", F)
    _like("F", F, "W", W)
    _nonnegative("F", F)
    xp = array_module(W)
    return _scores("W, F", xp.einsum("ij,ij->i", W * W, F))


def per_sample_sq_grad_sum(dY, X, chunk=None):
    """dY (B, T, d_out), X (B, T, d_in) -> (d_out, d_in): Σ_b G_b ⊙ G_b with G_b = dY_bᵀ X_b.

    A sample is one sequence b; G_b is the gradient of sample b's loss when dY is the gradient of the
    loss summed over samples. Each chunk of samples is one batched matmul (c, d_out, T) @ (c, T, d_in):
    transient memory chunk × d_out × d_in (chunk = B, all at once, by default; chunk = 1 loops over
    samples with one d_out×d_in transient). Ragged samples: pad to (B, T, ·) with dY = 0 at padded
    positions (they then add nothing). Sum the results over calibration batches and divide by the
    total number of samples to get F.
    """
    _float_array("dY", dY, 3, "3-D (B, T, d_out)")
    _float_array("X", X, 3, "3-D (B, T, d_in)")
    BT = tuple(dY.shape[:2])
    require(tuple(X.shape[:2]) == BT, "X.shape", tuple(X.shape), f"leading (B, T) = {BT} as in dY")
    require(array_module(X) is array_module(dY), "X", type(X).__module__, "an array on the backend of dY")
    B = dY.shape[0]
    chunk = B if chunk is None else positive_int("chunk", chunk)
    xp = array_module(dY)
    total = xp.zeros((dY.shape[2], X.shape[2]), dtype=xp.result_type(dY, X))
    for start in range(0, B, chunk):
        stop = start + chunk
        G = xp.matmul(dY[start:stop].transpose(0, 2, 1), X[start:stop])  # (c, d_out, d_in) per-sample grads
        total += xp.einsum("bij,bij->ij", G, G)
    return total


def zeroth_order_gradient(loss_fn, params, n_samples, eps=1e-3, *, rng):
    """Central-difference SPSA gradient estimate: {name: array} -> {name: Ĝ of the same shape}.

    Ĝ = (1/K) Σ_k [(L(θ+εz_k) − L(θ−εz_k)) / 2ε] z_k with K = n_samples and z_k ~ N(0, I) over all
    params jointly. Draw order: for k = 1..K, for each name in the dict's order, one
    `rng.standard_normal(shape)` (float64 on the host, then cast to the param's dtype and moved to its
    backend). `rng` is a numpy Generator (or a seed). `loss_fn(perturbed: dict) -> float` receives new
    arrays; `params` is never modified. Unbiased for a quadratic loss, bias O(ε²) in general
    (proofs/importance.md). Prefer float64: in float32 the difference quotient loses ~log10(1/ε) digits.
    """
    if not callable(loss_fn):
        raise bad_type("loss_fn", loss_fn, "a callable (dict of arrays) -> float")
    if not isinstance(params, dict) or not params:
        raise bad_type("params", params, "a non-empty dict name -> float array")
    for name, a in params.items():
        if not (hasattr(a, "dtype") and hasattr(a, "shape")) or not np.issubdtype(a.dtype, np.floating):
            raise bad_type(f"params[{name!r}]", a, "a NumPy or CuPy array of a floating dtype")
    xp = array_module(*params.values())
    require(
        all(array_module(a) is xp for a in params.values()), "params", "mixed backends", "one backend"
    )
    n_samples = positive_int("n_samples", n_samples)
    eps = real_in("eps", eps, 0.0, math.inf, low_open=True, high_open=True)
    gen = make_rng(rng)

    def loss_at(z, sign):
        value = loss_fn({name: a + (sign * eps) * z[name] for name, a in params.items()})
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise bad_type("loss_fn()", value, "a real number (a float or a 0-d array)")
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss_fn()={value!r}: expected a finite loss at the perturbed params")
        return value

    total = {name: xp.zeros_like(a) for name, a in params.items()}
    for _ in range(n_samples):
        z = {name: to_device(gen.standard_normal(a.shape).astype(a.dtype), xp) for name, a in params.items()}
        slope = (loss_at(z, 1.0) - loss_at(z, -1.0)) / (2.0 * eps)
        for name in total:
            total[name] += slope * z[name]
    return {name: g / n_samples for name, g in total.items()}


def _quantile_mean_weights(n_classes, n_quantiles):
    """(n_classes,) host float64 w with mean_q quantile_q(x) = Σ_k w_k x_(k) for sorted x.

    Linear interpolation (NumPy's and PyTorch's default): position h = q (C − 1), value
    x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌊h⌋+1) − x_(⌊h⌋)); each quantile puts weight 1 − frac on ⌊h⌋ and
    frac on ⌊h⌋ + 1 (clipped to C − 1), averaged over the Q quantiles (summed first, divided by Q
    once: one class gets weight exactly 1).
    """
    h = np.linspace(0.0, 1.0, n_quantiles) * (n_classes - 1)
    lo = np.floor(h).astype(np.int64)
    frac = h - lo
    w = np.zeros(n_classes)
    np.add.at(w, lo, 1.0 - frac)
    np.add.at(w, np.minimum(lo + 1, n_classes - 1), frac)
    return w / n_quantiles


def quantile_mean(S, n_quantiles=11):
    """S (classes, out) -> (out,): mean over q in linspace(0, 1, n_quantiles) of the linear-interpolation
    quantile of S[:, i] across classes. Computed as one weighted sum of the class-sorted scores."""
    _float_array("S", S, 2, "2-D (classes, out)")
    require(S.shape[0] >= 1, "S.shape", tuple(S.shape), "at least one class")
    n_quantiles = positive_int("n_quantiles", n_quantiles)
    require(n_quantiles >= 2, "n_quantiles", n_quantiles, "at least 2 (the quantiles include 0 and 1)")
    xp = array_module(S)
    w = xp.asarray(_quantile_mean_weights(S.shape[0], n_quantiles), dtype=S.dtype)
    return w @ xp.sort(S, axis=0)


def normalize_by_layer_mean(scores, arg="scores"):
    """scores (d,) -> scores / mean(scores) (Torch-Pruning's default; what `global_threshold_rows`
    ranks). A mean that is zero (an all-zero layer), negative or non-finite is an error naming `arg`."""
    _float_array(arg, scores, 1, "1-D (d,)")
    require(scores.shape[0] >= 1, f"{arg}.shape", tuple(scores.shape), "at least one score")
    xp = array_module(scores)
    mean = xp.mean(scores)
    m = float(mean)  # host synchronisation: a non-positive mean must raise here
    if not (m > 0.0 and math.isfinite(m)):
        raise bad_value(f"mean({arg})", m, "a positive finite mean (scores cannot be mean-normalised)")
    return scores / mean


# ----------------------------------------------------------------------------------------------
# budgets and selection
# ----------------------------------------------------------------------------------------------


def _descending_order(scores):
    """Indices sorting `scores` descending, ties by ascending index (a stable sort of 0 − s: the
    subtraction maps −0.0 and +0.0 to +0.0, so a radix sort (CuPy/CUB) cannot separate them)."""
    xp = array_module(scores)
    return xp.argsort(0.0 - scores, kind="stable")


def top_rows(scores, r):
    """scores (d,) -> (r,) sorted int64 indices of the r highest scores (equal scores: lower index wins)."""
    _float_array("scores", scores, 1, "1-D (d,)")
    r = _count_in("r", r, scores.shape[0])
    xp = array_module(scores)
    return xp.sort(_descending_order(scores)[:r]).astype(xp.int64)


def global_threshold_rows(scores_by_layer, total_rows):
    """{layer: scores (d_l,)} -> {layer: sorted int64 indices}: the `total_rows` highest
    mean-normalised scores over all layers (one threshold), ties by (layer order, index).

    Every layer appears in the result; a layer whose scores all fall below the threshold gets an
    empty index array (it gets no adapter).
    """
    if not isinstance(scores_by_layer, dict) or not scores_by_layer:
        raise bad_type("scores_by_layer", scores_by_layer, "a non-empty dict layer -> 1-D float scores")
    names = list(scores_by_layer)
    normed = []
    for name in names:
        arg = f"scores_by_layer[{name!r}]"
        s = _float_array(arg, scores_by_layer[name], 1, "1-D (d_out,)")
        require(s.shape[0] >= 1, f"{arg}.shape", tuple(s.shape), "at least one score")
        same_backend = not normed or array_module(s) is array_module(normed[0])
        require(same_backend, arg, type(s).__module__, "one backend for all layers")
        normed.append(normalize_by_layer_mean(s, arg))
    sizes = [s.shape[0] for s in normed]
    total_rows = _count_in("total_rows", total_rows, sum(sizes))
    xp = array_module(*normed)
    chosen = xp.sort(_descending_order(xp.concatenate(normed))[:total_rows]).astype(xp.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cuts = to_numpy(xp.searchsorted(chosen, xp.asarray(offsets))).tolist()  # one host transfer
    return {name: chosen[cuts[k] : cuts[k + 1]] - int(offsets[k]) for k, name in enumerate(names)}


# ----------------------------------------------------------------------------------------------
# column versions (input features; structural neuron mode): the row functions on Wᵀ
# ----------------------------------------------------------------------------------------------


def col_magnitude(W, p=2):
    """W (d_out, d_in) -> (d_in,): Σ_i |W_ij|^p."""
    return row_magnitude(_matrix("W", W).T, p)


def col_taylor(W, G, multivariable=False):
    """W, G (d_out, d_in) -> (d_in,): Σ_i |W_ij G_ij|, or |Σ_i W_ij G_ij|."""
    return row_taylor(_matrix("W", W).T, _matrix("G", G).T, multivariable)


def col_wanda(W, act_norm):
    """W (d_out, d_in), act_norm (d_in,) -> (d_in,): ‖X_j‖₂ · Σ_i |W_ij|."""
    _matrix("W", W)
    _float_array("act_norm", act_norm, 1, f"1-D (d_in,) = ({W.shape[1]},)")
    require(act_norm.shape[0] == W.shape[1], "act_norm.shape", tuple(act_norm.shape), f"({W.shape[1]},), W's d_in")
    xp = array_module(W)
    return xp.sum(xp.abs(W), axis=0) * act_norm


def col_obd(W, F):
    """W, F (d_out, d_in) -> (d_in,): Σ_i W_ij² F_ij."""
    return row_obd(_matrix("W", W).T, _matrix("F", F).T)
