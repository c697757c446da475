"""Structural (neuron) groups of a GPT-2 block for SPruFT's neuron mode (map:
minisft/methods/spruft/__init__.py; decisions: proofs/decisions.md §1; groups as in the dependency graphs of Torch-Pruning / LLM-Pruner).

Parameter names are HF GPT-2's without "transformer." and without the block prefix "h.{i}."
(the suffixes below); weights are (out, in), C = n_embd, hd = C / n_head:

- MLP hidden neuron i (0 <= i < 4C): row i of `mlp.c_fc.weight` (4C, C) and column i of
  `mlp.c_proj.weight` (C, 4C).
- attention head h (0 <= h < n_head): rows h·hd..(h+1)·hd of each of q, k, v in
  `attn.c_attn.weight` (3C, C), i.e. rows {h·hd + t, C + h·hd + t, 2C + h·hd + t : 0 <= t < hd}
  (the fused output splits into q | k | v, each viewed as (n_head, hd)), and columns h·hd..(h+1)·hd
  of `attn.c_proj.weight` (C, C) (its input is the heads' outputs concatenated head-major).

A `Groups` holds, per member tensor, an index matrix (n_groups, k): row g lists group g's indices
along that member's axis (ROWS = 0: output neurons; COLS = 1: input features). Member scores are
the per-row scores of importance.py (row_* for ROWS members, col_* for COLS members). A block with
no selected group returns empty index arrays (no adapter there).
"""

from dataclasses import dataclass

import numpy as np

from ...core.backend import array_module, to_numpy
from ...core.errors import bad_type, bad_value, positive_int, require

ROWS, COLS = 0, 1


@dataclass(frozen=True)
class Member:
    """One tensor's share of every group: `indices[g]` are group g's indices along `axis` of the
    parameter `h.{i}.{suffix}`, whose length along `axis` is `dim`."""

    suffix: str  # e.g. "mlp.c_fc.weight"
    axis: int  # ROWS (0) or COLS (1)
    dim: int  # size of the weight along `axis`
    indices: np.ndarray  # (n_groups, k) int64, host


@dataclass(frozen=True)
class Groups:
    """A partition of some rows / columns of one block's weights into structural groups."""

    kind: str  # "mlp_neuron" or "attention_head"
    members: tuple  # of Member

    @property
    def n_groups(self):
        return self.members[0].indices.shape[0]

    @property
    def group_size(self):
        """Number of rows and columns in one group (the denominator of the group mean)."""
        return sum(m.indices.shape[1] for m in self.members)

    def group(self, g):
        """[(suffix, axis, indices (k,))] of group g."""
        return [(m.suffix, m.axis, m.indices[g]) for m in self.members]


def mlp_neuron_groups(n_embd):
    """4·n_embd groups: neuron i = {row i of mlp.c_fc.weight, column i of mlp.c_proj.weight}."""
    hidden = 4 * positive_int("n_embd", n_embd)
    ids = np.arange(hidden, dtype=np.int64)[:, None]
    return Groups(
        "mlp_neuron",
        (Member("mlp.c_fc.weight", ROWS, hidden, ids), Member("mlp.c_proj.weight", COLS, hidden, ids)),
    )


def attention_head_groups(n_embd, n_head):
    """n_head groups: head h = {its q, k, v rows of attn.c_attn.weight, its columns of attn.c_proj.weight}."""
    C, H = positive_int("n_embd", n_embd), positive_int("n_head", n_head)
    require(C % H == 0, "n_embd", C, f"a multiple of n_head={H}")
    heads = np.arange(C, dtype=np.int64).reshape(H, C // H)  # (H, hd): head-major feature layout
    qkv = np.concatenate([heads, C + heads, 2 * C + heads], axis=1)  # (H, 3·hd)
    return Groups(
        "attention_head",
        (Member("attn.c_attn.weight", ROWS, 3 * C, qkv), Member("attn.c_proj.weight", COLS, C, heads)),
    )


def group_scores(groups, member_scores):
    """{(suffix, axis): scores (dim,)} -> (n_groups,): mean over every member row/column of the group.

    `member_scores` has exactly one entry per member of `groups`, e.g. for MLP neurons
    {("mlp.c_fc.weight", ROWS): row_taylor(W_fc, G_fc), ("mlp.c_proj.weight", COLS): col_taylor(W_pr, G_pr)}.
    """
    if not isinstance(groups, Groups):
        raise bad_type("groups", groups, "a Groups (mlp_neuron_groups / attention_head_groups)")
    keys = [(m.suffix, m.axis) for m in groups.members]
    if not isinstance(member_scores, dict):
        raise bad_type("member_scores", member_scores, "a dict (suffix, axis) -> scores")
    require(set(member_scores) == set(keys), "member_scores", list(member_scores), f"exactly the keys {keys}")
    xp = array_module(*member_scores.values())
    total = 0.0
    for m, key in zip(groups.members, keys):
        s = member_scores[key]
        arg = f"member_scores[{key!r}]"
        if not (hasattr(s, "dtype") and hasattr(s, "shape")) or not np.issubdtype(s.dtype, np.floating):
            raise bad_type(arg, s, "a NumPy or CuPy float array")
        require(tuple(s.shape) == (m.dim,), f"{arg}.shape", tuple(s.shape), f"({m.dim},)")
        require(array_module(s) is xp, arg, type(s).__module__, "one backend for all members")
        total = total + xp.sum(s[xp.asarray(m.indices)], axis=1)
    return total / groups.group_size


def group_adapter_indices(groups, selected, block):
    """Selected group ids -> ({param name: sorted row indices}, {param name: sorted column indices}).

    Names carry the block prefix, e.g. "h.3.mlp.c_fc.weight". `selected` (any int array or sequence,
    NumPy or CuPy, e.g. from `importance.top_rows(group_scores(...), r)`) holds distinct ids in
    [0, n_groups); it may be empty (then every index array is empty: no adapter). Indices are host
    int64 arrays.
    """
    if not isinstance(groups, Groups):
        raise bad_type("groups", groups, "a Groups (mlp_neuron_groups / attention_head_groups)")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 0:
        raise bad_value("block", block, "a non-negative integer (the block index i of h.{i})")
    ids = np.asarray(to_numpy(selected)).reshape(-1)
    require(ids.size == 0 or np.issubdtype(ids.dtype, np.integer), "selected", ids.dtype, "integer group ids")
    ids = ids.astype(np.int64)
    n = groups.n_groups
    require(bool(np.all((ids >= 0) & (ids < n))), "selected", ids.tolist(), f"group ids in [0, {n})")
    require(np.unique(ids).size == ids.size, "selected", ids.tolist(), "distinct group ids")
    rows, cols = {}, {}
    for m in groups.members:
        (rows if m.axis == ROWS else cols)[f"h.{int(block)}.{m.suffix}"] = np.sort(m.indices[ids].reshape(-1))
    return rows, cols
