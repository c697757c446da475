"""Calibration statistics for SPruFT's importance scores (map: minisft/methods/spruft/__init__.py;
decisions: proofs/decisions.md §1; derivations: proofs/spruft.md).

A linear layer is Y = X Wᵀ + b, W (d_out, d_in); X (N, d_in) and dY (N, d_out) are one batch
flattened over (B, T), dY the gradient of the batch's MEAN loss (what `GPT.loss_and_grads`
differentiates). Over calibration batches b = 1..K a probe accumulates

    GradientProbe           G = Σ_b dY⁽ᵇ⁾ᵀ X⁽ᵇ⁾                       (d_out, d_in)  Taylor
    StreamingTaylorProbe    rows_i = Σ_b Σ_n dY⁽ᵇ⁾_ni (X⁽ᵇ⁾Wᵀ)_ni       (d_out,)  multivariable Taylor
                            cols_j = Σ_b Σ_n X⁽ᵇ⁾_nj (dY⁽ᵇ⁾W)_nj       (d_in,)   (neuron mode)
    SquaredGradientProbe    F = (1/S) Σ_b Σ_s G_s ⊙ G_s                (d_out, d_in)  OBD
                            (G_s the gradient of sample s's share of its batch loss, S samples)
    ActivationNormProbe     ‖X_j‖₂ = sqrt(Σ_b Σ_n X⁽ᵇ⁾_nj²)             (3, d_in) wanda (forward only; the
                                                                          sum in three scaled ranges)

and `zeroth_order_weight_gradients` estimates G from forward passes only:
Ĝ = Σ_b SPSA_b(W), each term `importance.zeroth_order_gradient` on batch b's loss.

A probe is a zero-parameter adapter (the adapter contract of `minisft.model.adapters.base`): its forward
keeps a reference to the layer input X (no copy), its backward sees dY and adds the batch's
statistic into its buffers; it adds nothing to Y and nothing to dX. Attaching it makes the
gradient planner route dY to that layer, so a fully frozen model computes exactly the statistics
asked for: no weight-gradient buffer of any base tensor, and no statistic of an unprobed layer.
`buffers()` lists what a probe holds (the streaming probe holds only 1-D vectors: the
multivariable score never forms a d_out×d_in array; tests/test_spruft.py checks it).
"""

from dataclasses import is_dataclass, replace

from ...model.adapters.base import Adapter
from ...distributed.data_parallel import loss as global_loss
from ...distributed.data_parallel import rank_batches, reduce_loss_and_grads, world_size
from ...core.errors import bad_type, bad_value, positive_int, require
from .importance import (TaylorAccumulator, norms_from_square_sums, per_sample_sq_grad_sum, square_sums_by_range,
    zeroth_order_gradient)


class Probe(Adapter):
    """A zero-parameter adapter that accumulates a statistic of (X, dY) over calibration batches."""

    kind = "probe"

    def __init__(self, model, layer):
        W = model.params[layer + ".weight"]
        super().__init__(layer, *W.shape, model.xp, model.dtype)
        self.weight = W  # the frozen base weight (a reference), for statistics that need XWᵀ or dY W
        self.batches = 0

    def _forward(self, x, y):
        return y, x  # cache the layer input X (..., d_in) by reference; Y is left unchanged

    def _backward(self, dy, x, dx):
        self._accumulate(dy, x)
        self.batches += 1
        return {}

    def delta_weight(self):
        """A probe changes nothing: ΔW = 0."""
        return self.xp.zeros((self.d_out, self.d_in), dtype=self.dtype), None

    def buffers(self):
        """{name: array} of everything the probe accumulates (for memory checks and reports)."""
        raise TypeError(f"{type(self).__name__} must implement buffers()")

    def sums(self):
        """{name: array} of the sums a data-parallel run adds over its ranks: every buffer, also on a
        rank that saw no calibration batch (then zeros of the same shape and dtype)."""
        return self.buffers()

    def _accumulate(self, dy, x):
        raise TypeError(f"{type(self).__name__} must implement _accumulate(dy, x)")


class GradientProbe(Probe):
    """G = Σ_batches dYᵀ X (d_out, d_in): the weight gradient summed over calibration batches."""

    def __init__(self, model, layer):
        super().__init__(model, layer)
        self.G = self.xp.zeros((self.d_out, self.d_in), dtype=self.dtype)

    def _accumulate(self, dy, x):
        # dy (..., d_out), x (..., d_in)
        self.G += dy.reshape(-1, self.d_out).T @ x.reshape(-1, self.d_in)

    def buffers(self):
        return {"G": self.G}


class StreamingTaylorProbe(Probe):
    """Signed multivariable-Taylor sums without a d_out×d_in buffer:
    rows (d_out,) Σ_n dY_ni (XWᵀ)_ni and/or cols (d_in,) Σ_n X_nj (dY W)_nj, over all batches."""

    def __init__(self, model, layer, rows=True, cols=False):
        super().__init__(model, layer)
        require(rows or cols, "rows/cols", (rows, cols), "at least one of rows, cols")
        self.rows = TaylorAccumulator() if rows else None
        self.cols = TaylorAccumulator() if cols else None

    def _accumulate(self, dy, x):
        # dy (..., d_out), x (..., d_in); transients (N, d_out) and (N, d_in) only
        if self.rows is not None:
            self.rows.update(dy, x @ self.weight.T)
        if self.cols is not None:
            self.cols.update(dy @ self.weight, x)

    def scores(self):
        """{"rows": (d_out,), "cols": (d_in,)} multivariable scores |signed sums| (those kept)."""
        return {name: acc.scores() for name, acc in (("rows", self.rows), ("cols", self.cols)) if acc is not None}

    def buffers(self):
        return {name: acc.signed for name, acc in (("rows", self.rows), ("cols", self.cols))
                if acc is not None and acc.signed is not None}

    def sums(self):
        for acc, d in ((self.rows, self.d_out), (self.cols, self.d_in)):
            if acc is not None and acc.signed is None:
                acc.signed = self.xp.zeros(d, dtype=self.dtype)
        return self.buffers()


class SquaredGradientProbe(Probe):
    """Σ over samples (sequences) of the squared per-sample weight gradient, and the sample count."""

    def __init__(self, model, layer):
        super().__init__(model, layer)
        self.sq_sum = self.xp.zeros((self.d_out, self.d_in), dtype=self.dtype)
        self.samples = self.xp.zeros((), dtype="int64")  # an array, so a data-parallel run sums it with sq_sum

    def _accumulate(self, dy, x):
        # dy (B, T, d_out), x (B, T, d_in): one sample per sequence b
        self.sq_sum += per_sample_sq_grad_sum(dy, x)
        self.samples += dy.shape[0]

    def fisher(self):
        """F (d_out, d_in): the mean over samples of the squared per-sample gradient."""
        require(self.samples > 0, f"{self.layer} probe", "no samples", "at least one calibration batch first")
        return self.sq_sum / int(self.samples)

    def buffers(self):
        return {"sq_sum": self.sq_sum, "samples": self.samples}


class ActivationNormProbe(Probe):
    """‖X_j‖₂ over all calibration tokens (d_in,), accumulated in the FORWARD pass as the three range
    sums of importance.square_sums_by_range (so a forward-only calibration suffices, the probe asks
    for no gradient, and no square of a tiny or huge activation under- or overflows)."""

    def __init__(self, model, layer):
        super().__init__(model, layer)
        self.sq = self.xp.zeros((3, self.d_in), dtype=self.dtype)

    def _forward(self, x, y):
        # x (..., d_in): add every token's squares per input feature; no cache, no backward
        self.sq += square_sums_by_range(x.reshape(-1, self.d_in))
        self.batches += 1
        return y, None

    def norms(self):
        """(d_in,) ‖X_j‖₂ = sqrt(Σ X_nj²) (the released code keeps the squared sum and never takes
        the root; the root changes rankings: proofs/importance.md)."""
        require(self.batches > 0, f"{self.layer} probe", "no batches", "at least one calibration batch first")
        return norms_from_square_sums(self.sq)

    def buffers(self):
        return {"sq": self.sq}


def calibration_batches(task, rng, n, batch_size=None):
    """[(x, y)] of `n` batches drawn in order with `task.sample(rng)`; `batch_size` (None: the
    task's) sequences each, drawn from a copy of the task with that batch size."""
    n = positive_int("calib_batches", n)
    if not callable(getattr(task, "sample", None)):
        raise bad_type("task", task, "a task with sample(rng) -> (x, y) (minisft.training.train.Task)")
    if batch_size is not None:
        batch_size = positive_int("calib_batch_size", batch_size)
        if not is_dataclass(task):
            raise bad_type("task", task, "a dataclass task (minisft.training.train.Task) when calib_batch_size is set")
        task = replace(task, batch_size=batch_size)
    return [task.sample(rng) for _ in range(n)]


def run_calibration(model, probes, batches, backward=True, comm=None):
    """Attach `probes` ({layer: Probe}), run forward + backward (forward only: `backward=False`) on
    every batch, detach them again (also on an error); returns the mean calibration loss. The
    probes keep their statistics. Freeze the model first: a trainable tensor would cost its
    gradient here for nothing.

    comm (data parallel, minisft.distributed.data_parallel): each rank runs its whole batches
    (batch i on rank i mod N), then ONE all-reduce adds every probe's `sums()` and the losses, so
    every rank holds the single process's statistics (each a sum over batches). The sums are signed
    where the statistic is (multivariable Taylor): |·| is taken after the reduction, in `scores()`."""
    if not isinstance(probes, dict) or not probes:
        raise bad_type("probes", probes, "a non-empty dict layer -> Probe")
    require(len(batches) > 0, "batches", batches, "at least one (x, y) batch")
    for layer, probe in probes.items():
        if not isinstance(probe, Probe) or probe.layer != layer:
            raise bad_value(f"probes[{layer!r}]", probe, f"a Probe built for layer {layer}")
    attached = []
    try:
        for layer, probe in probes.items():
            attached.append(model.add_adapter(layer, probe))
        total = 0.0
        for x, y in rank_batches(batches, comm):
            total += model.loss_and_grads(x, y)[0] if backward else model.loss(x, y)
    finally:
        for probe in attached:
            ads = model.adapters[probe.layer]
            ads.remove(probe)
            if not ads:
                del model.adapters[probe.layer]
    if world_size(comm) > 1:
        sums = {f"{layer}/{name}": a for layer, probe in probes.items() for name, a in probe.sums().items()}
        total, _, _ = reduce_loss_and_grads(comm, total, sums)
        for probe in probes.values():
            probe.batches = len(batches)  # the reduced statistics cover every batch
    return total / len(batches)


def _loss_with(model, x, y, base, comm):
    """loss_fn(perturbed) for `zeroth_order_gradient`: the batch loss with the tensors of `perturbed`
    swapped into the model (rebinding dict entries, never writing arrays), then restored."""

    def loss_fn(perturbed):
        model.params.update(perturbed)
        try:
            return global_loss(model, x, y, comm)
        finally:
            model.params.update(base)

    return loss_fn


def zeroth_order_weight_gradients(model, layers, batches, n_samples, eps, rng, comm=None):
    """{layer: Ĝ (d_out, d_in)}: Σ over batches of the central-difference SPSA estimate of the
    weight gradient of `layers`, `n_samples` fresh directions per batch, forward passes only.
    comm: each perturbed loss is the global batch loss (data parallel); the directions come from
    the shared `rng`, so every rank forms the same Ĝ."""
    require(len(batches) > 0, "batches", batches, "at least one (x, y) batch")
    base = {layer + ".weight": model.params[layer + ".weight"] for layer in layers}
    total = None
    for x, y in batches:
        g = zeroth_order_gradient(_loss_with(model, x, y, base, comm), base, n_samples, eps, rng=rng)
        total = g if total is None else {k: total[k] + g[k] for k in total}
    return {layer: total[layer + ".weight"] for layer in layers}
