"""Structural (neuron) groups of GPT-2 (minisft.methods.spruft.structure).

Oracles: the layouts written out from the GPT-2 definition (q | k | v split, head-major features),
the PyTorch twin's attention (reference_models.torch_gpt.Block) for which c_attn rows drive which
head, and explicit per-group slices for the group means. Derivations: proofs/importance.md.
"""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minisft.core.backend import to_numpy
from minisft.methods.spruft.importance import col_taylor, row_taylor, top_rows
from minisft.methods.spruft.structure import (COLS, ROWS, attention_head_groups, group_adapter_indices, group_scores,
    mlp_neuron_groups)

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

heads_and_dims = st.tuples(st.integers(1, 4), st.integers(1, 4))  # (n_head, head_dim)


def head_rows(C, hd, h):
    """Rows of c_attn owned by head h, written out: q, k and v blocks."""
    return [part * C + h * hd + t for part in range(3) for t in range(hd)]


@given(C=st.integers(1, 12))
def test_mlp_groups_layout(C):
    groups = mlp_neuron_groups(C)
    assert groups.n_groups == 4 * C and groups.group_size == 2
    for i in range(4 * C):
        (fc, fc_axis, fc_idx), (pr, pr_axis, pr_idx) = groups.group(i)
        assert (fc, fc_axis, fc_idx.tolist()) == ("mlp.c_fc.weight", ROWS, [i])
        assert (pr, pr_axis, pr_idx.tolist()) == ("mlp.c_proj.weight", COLS, [i])


@given(hd_H=heads_and_dims)
def test_attention_groups_layout_and_partition(hd_H):
    H, hd = hd_H
    C = H * hd
    groups = attention_head_groups(C, H)
    assert groups.n_groups == H and groups.group_size == 4 * hd
    rows_seen, cols_seen = [], []
    for h in range(H):
        (attn, attn_axis, rows), (proj, proj_axis, cols) = groups.group(h)
        assert (attn, attn_axis, proj, proj_axis) == ("attn.c_attn.weight", ROWS, "attn.c_proj.weight", COLS)
        assert sorted(rows.tolist()) == head_rows(C, hd, h)
        assert cols.tolist() == list(range(h * hd, (h + 1) * hd))
        rows_seen += rows.tolist()
        cols_seen += cols.tolist()
    assert sorted(rows_seen) == list(range(3 * C)) and sorted(cols_seen) == list(range(C))  # a partition


@given(hd_H=heads_and_dims, T=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_head_rows_drive_only_that_head_in_torch_twin(hd_H, T, seed):
    """In the torch twin with c_proj = identity, the attention output is the heads' outputs
    concatenated; perturbing head h's c_attn rows (weights and bias) changes exactly the columns
    h·hd..(h+1)·hd of it, i.e. the c_proj columns that head h feeds."""
    torch = pytest.importorskip("torch")
    from reference_models.torch_gpt import Block

    H, hd = hd_H
    C = H * hd
    torch.manual_seed(seed % 2**31)
    block = Block(C, H, sdpa=False).double()
    with torch.no_grad():
        block.attn.c_proj.weight.copy_(torch.eye(C, dtype=torch.float64))
        block.attn.c_proj.bias.zero_()
    x = torch.randn(1, T, C, dtype=torch.float64)
    groups = attention_head_groups(C, H)
    with torch.no_grad():
        base = block.attention(x)
        for h in range(H):
            (_, _, rows), (_, _, cols) = groups.group(h)
            saved = block.attn.c_attn.weight.clone(), block.attn.c_attn.bias.clone()
            block.attn.c_attn.weight[rows] += torch.randn(len(rows), C, dtype=torch.float64)
            block.attn.c_attn.bias[rows] += 1.0
            moved = (block.attention(x) - base).abs().amax(dim=(0, 1)).numpy()
            block.attn.c_attn.weight.copy_(saved[0])
            block.attn.c_attn.bias.copy_(saved[1])
            outside = np.setdiff1d(np.arange(C), cols)
            assert np.all(moved[outside] == 0.0), f"head {h} moved other heads' outputs: {moved}"
            assert np.all(moved[cols] > 0.0), f"head {h}'s own outputs did not move: {moved}"


@fixture_ok
@given(C=st.integers(1, 8), data=st.data())
def test_mlp_group_score_is_mean_of_its_row_and_column(xp, C, data):
    fc = data.draw(hnp.arrays(np.float64, 4 * C, elements=st.floats(0, 100)))
    pr = data.draw(hnp.arrays(np.float64, 4 * C, elements=st.floats(0, 100)))
    member_scores = {("mlp.c_fc.weight", ROWS): xp.asarray(fc), ("mlp.c_proj.weight", COLS): xp.asarray(pr)}
    got = group_scores(mlp_neuron_groups(C), member_scores)
    expected = [(fc[i] + pr[i]) / 2 for i in range(4 * C)]
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-15, atol=0)


@fixture_ok
@given(hd_H=heads_and_dims, data=st.data())
def test_head_group_score_is_mean_over_all_member_rows_and_columns(xp, hd_H, data):
    H, hd = hd_H
    C = H * hd
    attn = data.draw(hnp.arrays(np.float64, 3 * C, elements=st.floats(0, 100)))
    proj = data.draw(hnp.arrays(np.float64, C, elements=st.floats(0, 100)))
    got = group_scores(
        attention_head_groups(C, H),
        {("attn.c_attn.weight", ROWS): xp.asarray(attn), ("attn.c_proj.weight", COLS): xp.asarray(proj)},
    )
    expected = []
    for h in range(H):
        q, k, v = (attn[p * C + h * hd : p * C + (h + 1) * hd] for p in range(3))
        members = np.concatenate([q, k, v, proj[h * hd : (h + 1) * hd]])
        expected.append(math.fsum(members) / members.size)
    diff = np.abs(to_numpy(got) - expected)
    assert np.all(diff <= 1e-13 * (1 + np.abs(expected))), f"max diff {diff.max():.3e}"


def test_group_scores_from_taylor_scores_of_a_block():
    """End to end on one block: head scores from row_taylor (c_attn) and col_taylor (c_proj) equal the
    mean, over the head's rows and columns, of Σ |W G| along each, computed by explicit slicing."""
    rng = np.random.default_rng(0)
    C, H = 8, 2
    hd = C // H
    W_attn, G_attn = rng.standard_normal((3 * C, C)), rng.standard_normal((3 * C, C))
    W_proj, G_proj = rng.standard_normal((C, C)), rng.standard_normal((C, C))
    got = group_scores(
        attention_head_groups(C, H),
        {
            ("attn.c_attn.weight", ROWS): row_taylor(W_attn, G_attn),
            ("attn.c_proj.weight", COLS): col_taylor(W_proj, G_proj),
        },
    )
    for h in range(H):
        rows = np.abs(W_attn * G_attn)[head_rows(C, hd, h)].sum(axis=1)
        cols = np.abs(W_proj * G_proj)[:, h * hd : (h + 1) * hd].sum(axis=0)
        assert got[h] == pytest.approx(np.concatenate([rows, cols]).mean(), rel=1e-13)


@given(C=st.integers(1, 6), block=st.integers(0, 11), data=st.data())
def test_mlp_adapter_indices(C, block, data):
    chosen = data.draw(st.lists(st.integers(0, 4 * C - 1), unique=True, max_size=4 * C))
    rows, cols = group_adapter_indices(mlp_neuron_groups(C), np.array(chosen, dtype=np.int64), block)
    assert list(rows) == [f"h.{block}.mlp.c_fc.weight"] and list(cols) == [f"h.{block}.mlp.c_proj.weight"]
    np.testing.assert_array_equal(rows[f"h.{block}.mlp.c_fc.weight"], sorted(chosen))
    np.testing.assert_array_equal(cols[f"h.{block}.mlp.c_proj.weight"], sorted(chosen))
    assert rows[f"h.{block}.mlp.c_fc.weight"].dtype == np.int64


@given(hd_H=heads_and_dims, data=st.data())
def test_attention_adapter_indices(hd_H, data):
    H, hd = hd_H
    C = H * hd
    chosen = data.draw(st.lists(st.integers(0, H - 1), unique=True, max_size=H))
    rows, cols = group_adapter_indices(attention_head_groups(C, H), chosen, 0)
    expected_rows = sorted(r for h in chosen for r in head_rows(C, hd, h))
    expected_cols = sorted(c for h in chosen for c in range(h * hd, (h + 1) * hd))
    np.testing.assert_array_equal(rows["h.0.attn.c_attn.weight"], expected_rows)
    np.testing.assert_array_equal(cols["h.0.attn.c_proj.weight"], expected_cols)


def test_selection_pipeline_from_top_rows(xp):
    """top_rows over group scores (any backend) feeds group_adapter_indices directly."""
    groups = mlp_neuron_groups(2)
    fc = xp.asarray(np.arange(8.0))
    pr = xp.asarray(np.array([9.0, 0, 0, 0, 0, 0, 0, 0]))
    scores = group_scores(groups, {("mlp.c_fc.weight", ROWS): fc, ("mlp.c_proj.weight", COLS): pr})
    # means: [4.5, 0.5, 1, 1.5, 2, 2.5, 3, 3.5] -> top 2 are neurons 0 and 7
    rows, cols = group_adapter_indices(groups, top_rows(scores, 2), 1)
    np.testing.assert_array_equal(rows["h.1.mlp.c_fc.weight"], [0, 7])
    np.testing.assert_array_equal(cols["h.1.mlp.c_proj.weight"], [0, 7])


def test_bad_input():
    with pytest.raises(ValueError, match="n_embd"):
        attention_head_groups(10, 3)
    with pytest.raises(ValueError, match="n_embd"):
        mlp_neuron_groups(0)
    groups = mlp_neuron_groups(2)
    ok = {("mlp.c_fc.weight", ROWS): np.ones(8), ("mlp.c_proj.weight", COLS): np.ones(8)}
    with pytest.raises(ValueError, match="member_scores"):
        group_scores(groups, {("mlp.c_fc.weight", ROWS): np.ones(8)})
    with pytest.raises(ValueError, match=r"member_scores\[\('mlp.c_proj.weight', 1\)\]\.shape"):
        group_scores(groups, {**ok, ("mlp.c_proj.weight", COLS): np.ones(7)})
    with pytest.raises(TypeError, match="groups"):
        group_scores("mlp", ok)
    for bad in ([8], [-1], [1, 1]):
        with pytest.raises(ValueError, match="selected"):
            group_adapter_indices(groups, bad, 0)
    with pytest.raises(ValueError, match="selected"):
        group_adapter_indices(groups, [0.5], 0)
    with pytest.raises(ValueError, match="block"):
        group_adapter_indices(groups, [0], -1)
    rows, cols = group_adapter_indices(groups, [], 0)  # nothing selected: no adapter
    assert rows["h.0.mlp.c_fc.weight"].size == 0 and cols["h.0.mlp.c_proj.weight"].size == 0
