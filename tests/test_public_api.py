"""The public API block of DESIGN.md, line for line (only its `...` placeholders are filled in), on
small inputs: every public name it promises (ms.GPT, ms.interop, ms.importance, ms.knapsack,
ms.gmt, ms.mgpp, ms.loradrop, ms.methods) must keep working wherever its code lives."""

import importlib
import re

import numpy as np
import pytest

import minisft as ms


def test_design_public_api_block_runs():
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 512, (2, 8)), rng.integers(0, 512, (2, 8))
    W, G, S = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), rng.standard_normal((5, 6))
    values, weights, capacity = np.array([3.0, 1.0, 2.0]), np.array([2, 1, 3]), 4
    grad, drop_ratio = rng.standard_normal((5, 5)), 0.4
    theta, lam, var0, var1 = rng.standard_normal(7) * 0.1, 1e-3, 1e-4, 0.05
    step, final, t_start, t_end = 5, 0.8, 2, 10
    importance, threshold = np.array([0.5, 0.3, 0.2]), 0.7

    # ---- DESIGN.md, "Public API" (backend=..., dtype=... filled in) ----
    cfg   = ms.GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64)  # noqa: E221
    model = ms.GPT(cfg, backend="numpy", dtype="float64", seed=0)      # backend: numpy | cupy | auto
    loss  = model.loss(idx, targets)                                     # idx, targets: int arrays (B, T)  # noqa: E221
    loss, grads = model.loss_and_grads(idx, targets)                     # grads: {name: array}, explicit backward
    logits = model.logits(idx)                                           # (B, T, vocab)
    sd = model.state_dict()                                              # {name: numpy array}, names above
    model = ms.GPT.from_state_dict(sd, cfg, backend="numpy", dtype="float64")
    hf_sd = ms.interop.to_hf_gpt2(sd); sd = ms.interop.from_hf_gpt2(hf_sd)   # HF names and (in,out) layout  # noqa: E702
    rm = ms.importance.row_magnitude(W, p=2)                 # (out,)  sum_j |W_ij|^p
    rt = ms.importance.row_taylor(W, G, multivariable=False) # (out,)  sum_j |W_ij G_ij|   or |sum_j W_ij G_ij|
    qm = ms.importance.quantile_mean(S, n_quantiles=11)      # S (classes, out) -> (out,), mean of linear-interp. quantiles
    ks = ms.knapsack.solve(values, weights, capacity)        # bool mask of an optimal 0-1 subset
    pf = ms.knapsack.pareto_front(values, weights)           # [(total_weight, total_value, mask)], all non-dominated
    gm = ms.gmt.gradient_mask(grad, drop_ratio)              # bool mask keeping the largest |grad| entries
    pg = ms.mgpp.neg_log_prior_grad(theta, lam, var0, var1)   # d/dtheta of -log mixture prior
    cs = ms.mgpp.cubic_sparsity(step, final, t_start, t_end, initial=0.0)
    sl = ms.loradrop.select_layers(importance, threshold)    # indices of layers that keep their own LoRA
    method = ms.methods.SPruFT(ratio=0.05, importance="taylor")
    # ---- end of the block ----

    assert np.isfinite(loss) and logits.shape == (2, 8, 512) and set(grads) == set(sd)
    assert rm.shape == rt.shape == (6,) and qm.shape == (6,)
    assert ks.tolist() == [True, True, False] and pf[-1][0] == 6
    assert int((~gm).sum()) == 10 and pg.shape == theta.shape and 0.0 < cs < final
    assert sl.tolist() == [0, 1] and method.config.ratio == 0.05


PAPERS = ["spruft", "adapeft", "loradrop", "gmt", "mgpp"]
SHARED = {"select": "minisft.methods.select", "budgets": "minisft.model.budgets", "batches": "minisft.data.batches",
          "adapters": "minisft.model.adapters", "experiment": "minisft.app.experiment", "train": "minisft.training.train"}


@pytest.mark.parametrize("paper", PAPERS)
def test_each_paper_package_docstring_is_a_map_to_code_that_exists(paper):
    """methods/<paper>/__init__.py names the paper (arXiv id) and the authors' code, and every
    `module.function` it points at (a module of the package or a shared one) exists."""
    package = importlib.import_module(f"minisft.methods.{paper}")
    doc = package.__doc__
    assert "arXiv" in doc and "Authors' code" in doc and "Choices" in doc
    here = {p.stem for p in __import__("pathlib").Path(package.__file__).parent.glob("*.py")} - {"__init__"}
    refs = {(m, path) for m, path in re.findall(r"(?<![/\w.])([a-z_]+)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", doc)
            if path not in ("py", "md")}  # file names are not references
    checked = 0
    for module, path in sorted(refs):
        if module in here:
            obj = importlib.import_module(f"minisft.methods.{paper}.{module}")
        elif module in SHARED:
            obj = importlib.import_module(SHARED[module])
        else:
            continue
        for name in path.split("."):
            assert hasattr(obj, name), f"{paper} map: {module}.{path} does not exist"
            obj = getattr(obj, name)
        checked += 1
    assert checked >= 5, f"{paper} map names only {checked} functions"
