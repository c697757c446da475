"""MGPP — magnitude pruning with a mixture Gaussian prior, as a fine-tuning method (Zhang, Sun &
Liang 2024, "Magnitude Pruning of Large Pretrained Transformer Models with a Mixture Gaussian
Prior", arXiv 2411.00969; ALGORITHMS.md §5).

Fine-tune every base tensor on the regularised objective

    J(θ) = (1/B) Σ_b ℓ_b(θ) + (1/n) Σ_{w prunable} −log π(w),   π = λ N(0, σ1²) + (1 − λ) N(0, σ0²)

(the mean loss of the batch plus the prior spread over the n training examples), and prune the
prunable weights by magnitude on the cubic schedule of Zhu & Gupta (2017):

    s_t = s_f + (s_i − s_f)(1 − (t − t_i)/(t_f − t_i))³  for t_i ≤ t ≤ t_f,  s_i = 0 before, s_f after.

Hooks: `transform_grads` adds (1/n)·∇(−log π)(w) (`minisft.mgpp.neg_log_prior_grad`) to the
mean-loss gradient of each prunable weight, which is ∇J (proofs/gmt_mgpp_methods.md §3);
`after_step` prunes at the pruning steps so that exactly round(s_t · n_prunable) weights are zero;
`optimizer_masks` hands the masks to the optimizer, which leaves pruned entries (weight and
moments, weight decay included) exactly as they are: zero, for good. prior=False is the plain
cubic magnitude-pruning baseline on the same schedule.

Choices (where the paper is ambiguous, or where our trainer decides):
- Prunable: the weight matrices of the linear layers (attn.c_attn, attn.c_proj, mlp.c_fc,
  mlp.c_proj of every block), not biases, LayerNorms or the embeddings (the tied LM head is wte);
  the prior acts on the prunable weights only. Every base tensor trains (full fine-tuning).
- n (`n_train`): the number of training examples. Default: the training stream's disjoint
  windows of block_size + 1 tokens, floor(len / (T + 1)), the unit one sample of `task.sample`
  is made of (as LoRA-drop's sample). Our loss is a mean over the T tokens of each window, so the
  exact posterior scaling would be n·T (proofs/gmt_mgpp_methods.md §3): pass n_train to use it.
- Step counting: t = the number of optimizer updates done (`after_step(model, step)` runs with
  t = step + 1). t_start, t_end are fractions of `total_steps`: t_i = floor(t_start · total_steps),
  t_f = floor(t_end · total_steps) (exact decimal reading), t_f > t_i required. The trainer does
  not tell a method its step count, so `total_steps` is an option (set it to TrainConfig.steps);
  `prepare` refuses to start without it.
- Pruning steps: t = t_i + k·every (k ≥ 1) below t_f, and t_f itself, so the final sparsity is
  reached at t_f ≤ total_steps whatever `every`; afterwards the mask is fixed.
- Re-pruning ranks only the surviving weights: the pruned ones enter the ranking as +inf, and the
  round(s_t · n) − (already pruned) smallest survivors are pruned (globally over all prunable
  matrices in model order, or per matrix with scope="layer"; ties: earlier matrix, lower flat
  index). As pruned weights are 0 this equals ranking every weight by |w|, except when a survivor
  is exactly 0: then the index tie-break could otherwise revive a pruned weight.
- Gradients of pruned entries are set to 0 in `transform_grads` (they are no longer parameters),
  so they are left out of the trainer's clipping norm as well.
- The prior's constants are minisft's defaults (`minisft.mgpp`); the paper's could not be confirmed.
- State: the masks travel in checkpoints (`state_arrays`), so a resumed run prunes on from them.
"""

from ...batches import as_stream
from ...errors import bad_value, boolean, positive_int, real_in, require
from .prior import (
    DEFAULT_LAMBDA,
    DEFAULT_PRUNE_END_FRACTION,
    DEFAULT_PRUNE_EVERY,
    DEFAULT_PRUNE_START_FRACTION,
    DEFAULT_SIGMA0,
    DEFAULT_SIGMA1,
    SCOPES,
    check_prior,
    cubic_sparsity,
    neg_log_prior_grad,
)
from ...model import linear_layer_names
from ...select import ratio_count, smallest_k_keep_mask, smallest_k_keep_masks, tensor_list, zero_where_dropped
from ..base import Method


def training_windows(task):
    """Disjoint windows of block_size + 1 tokens in the task's training stream (>= 1)."""
    stream = as_stream(task.train_ids)
    m = len(stream) // (task.block_size + 1)
    require(m >= 1, f"len({stream.name})", len(stream), f"at least block_size + 1 = {task.block_size + 1} tokens")
    return m


class MGPP(Method):
    """Mixture-Gaussian-prior magnitude pruning during full fine-tuning (module docstring)."""

    name = "mgpp"
    trains_base = True

    def __init__(self, final_sparsity=0.8, lam=DEFAULT_LAMBDA, sigma0=DEFAULT_SIGMA0, sigma1=DEFAULT_SIGMA1,
                 t_start=DEFAULT_PRUNE_START_FRACTION, t_end=DEFAULT_PRUNE_END_FRACTION,
                 every=DEFAULT_PRUNE_EVERY, prior=True, scope="global", n_train=None, total_steps=None):
        self.final_sparsity = real_in("final_sparsity", final_sparsity, 0.0, 1.0, low_open=False, high_open=True)
        self.lam, self.sigma0, self.sigma1 = check_prior(lam, sigma0, sigma1)
        self.t_start = real_in("t_start", t_start, 0.0, 1.0, low_open=False, high_open=True)
        self.t_end = real_in("t_end", t_end, 0.0, 1.0, low_open=True, high_open=False)
        require(self.t_end > self.t_start, "t_end", t_end, f"a fraction greater than t_start={t_start!r}")
        self.every = positive_int("every", every)
        self.prior = boolean("prior", prior)
        require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
        self.scope = scope
        self.n_train = None if n_train is None else positive_int("n_train", n_train)
        self.total_steps = None if total_steps is None else positive_int("total_steps", total_steps)
        self.t_i, self.t_f = (None, None) if self.total_steps is None else self._window(self.total_steps)
        self._pruning_steps = set() if self.total_steps is None else set(self.pruning_steps())
        self.prunable, self.sizes, self.n, self.masks = [], {}, None, {}  # set by prepare

    def _window(self, total_steps):
        """(t_i, t_f): the first and last step of the schedule's ramp, t_f > t_i."""
        t_i = ratio_count(self.t_start, total_steps, "floor")
        t_f = ratio_count(self.t_end, total_steps, "floor")
        require(t_f > t_i, "total_steps", total_steps,
                f"enough steps that floor(t_end * total_steps) = {t_f} exceeds floor(t_start * total_steps) = {t_i}")
        return t_i, t_f

    def options(self):
        return {"final_sparsity": self.final_sparsity, "lam": self.lam, "sigma0": self.sigma0,
                "sigma1": self.sigma1, "t_start": self.t_start, "t_end": self.t_end, "every": self.every,
                "prior": self.prior, "scope": self.scope, "n_train": self.n_train, "total_steps": self.total_steps}

    def pruning_steps(self):
        """The steps t (updates done) after which `after_step` prunes, ascending."""
        return list(range(self.t_i + self.every, self.t_f, self.every)) + [self.t_f]

    def prepare(self, model, task, rng):
        if self.total_steps is None:
            raise bad_value("total_steps", None, "the number of training steps (TrainConfig.steps): "
                            "t_start and t_end are fractions of it")
        model.unfreeze()
        self.prunable = [f"{layer}.weight" for layer in linear_layer_names(model.config)]
        self.sizes = {name: int(model.params[name].size) for name in self.prunable}
        self.n = self.n_train if self.n_train is not None else training_windows(task)
        self.masks = {}

    def transform_grads(self, model, grads, step):
        """grads[w] += (1/n) ∇(−log π)(w) for each prunable weight w (prior=True); pruned entries'
        gradients set to 0. In place; grads: {name: (shape) array}."""
        for name in self.prunable:
            g = grads[name]
            if self.prior:
                g += (1.0 / self.n) * neg_log_prior_grad(model.params[name], self.lam, self.sigma0, self.sigma1)
            if name in self.masks:
                zero_where_dropped(g, self.masks[name])
        return grads

    def optimizer_masks(self, model):
        return self.masks

    def target_counts(self, sparsity):
        """Pruned entries required at `sparsity`: [total] (global) or one count per prunable matrix."""
        if self.scope == "global":
            return [ratio_count(sparsity, sum(self.sizes.values()), "half_up")]
        return [ratio_count(sparsity, self.sizes[name], "half_up") for name in self.prunable]

    def after_step(self, model, step):
        if step + 1 in self._pruning_steps:
            self.prune(model, cubic_sparsity(step + 1, self.final_sparsity, self.t_i, self.t_f))

    def prune(self, model, sparsity):
        """Prune the smallest surviving |w| of the prunable (d_out, d_in) weights, in place, up to
        exactly the target counts at `sparsity` (a float in [0, 1)); newly pruned entries are set
        to 0 and the masks ((d_out, d_in) bool, True = kept) only ever lose True entries."""
        xp = model.xp
        weights = [model.params[name] for name in self.prunable]
        old = [self.masks.get(name) for name in self.prunable]
        ranked = [w if m is None else xp.where(m, xp.abs(w), xp.inf) for w, m in zip(weights, old)]
        ranked, _ = tensor_list("weights", dict(zip(self.prunable, ranked)))  # a NaN weight is an error
        pruned = [0 if m is None else int(m.size - xp.count_nonzero(m)) for m in old]
        if self.scope == "global":
            [target] = self.target_counts(sparsity)
            keep = smallest_k_keep_masks(ranked, target - sum(pruned))
        else:
            keep = [smallest_k_keep_mask(r, k - p) for r, k, p in zip(ranked, self.target_counts(sparsity), pruned)]
        for name, w, m, kp in zip(self.prunable, weights, old, keep):
            mask = kp if m is None else kp & m
            zero_where_dropped(w, mask)
            self.masks[name] = mask

    def state_arrays(self):
        return {f"mask/{name}": m for name, m in self.masks.items()}

    def load_state_arrays(self, arrays):
        self.masks = {k[len("mask/"):]: v.astype(bool) for k, v in arrays.items() if k.startswith("mask/")}

    def report(self):
        """Schedule, realised sparsity per prunable matrix and overall (from the masks)."""
        if not self.prunable:
            return {"prepared": False}
        pruned = {name: int(m.size - m.sum()) if (m := self.masks.get(name)) is not None else 0
                  for name in self.prunable}
        schedule = [{"step": t, "sparsity": s, "pruned": sum(self.target_counts(s))}
                    for t in self.pruning_steps()
                    for s in [cubic_sparsity(t, self.final_sparsity, self.t_i, self.t_f)]]
        total = sum(self.sizes.values())
        return {
            "prior": self.prior,
            "n_train": self.n,
            "prunable_params": total,
            "t_start_step": self.t_i,
            "t_end_step": self.t_f,
            "schedule": schedule,
            "sparsity": {name: p / self.sizes[name] for name, p in pruned.items()},
            "sparsity_overall": sum(pruned.values()) / total,
            "pruned": sum(pruned.values()),
            "target_pruned": sum(self.target_counts(self.final_sparsity)),
        }
