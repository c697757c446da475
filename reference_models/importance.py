"""PyTorch (autograd) twins of SPruFT's importance scores (minisft.methods.spruft.importance; Li & Bhaskara 2025,
arXiv 2502.11439): the parity oracle.

Written from the definitions, not from minisft's code: gradients come from autograd on a float64
torch.nn.Linear, per-sample gradients from a loop that zeroes the gradient before every sample,
quantiles from torch.quantile (linear interpolation). Inputs and outputs are NumPy arrays.
`loss_fn(Y)` maps the layer's output (a torch tensor, bias included) to a scalar tensor.
"""

import torch
from torch import nn


def make_linear(W, b=None):
    """A float64 torch.nn.Linear holding W (d_out, d_in) and b (d_out,) (or no bias)."""
    d_out, d_in = W.shape
    lin = nn.Linear(d_in, d_out, bias=b is not None, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W))
        if b is not None:
            lin.bias.copy_(torch.as_tensor(b))
    return lin


def linear_grads(W, b, X, loss_fn):
    """Autograd through Y = linear(X): {"G": dL/dW, "dY": dL/dY, "Y_nobias": X Wᵀ} as NumPy arrays.

    X may have any leading shape (..., d_in); dY and Y_nobias have the same leading shape."""
    lin = make_linear(W, b)
    Y = lin(torch.as_tensor(X))
    Y.retain_grad()
    loss_fn(Y).backward()
    with torch.no_grad():
        y_nobias = torch.as_tensor(X) @ lin.weight.T
    return {"G": lin.weight.grad.numpy(), "dY": Y.grad.numpy(), "Y_nobias": y_nobias.numpy()}


def row_magnitude(W, p):
    return torch.as_tensor(W).abs().pow(p).sum(dim=1).numpy()


def row_taylor(W, G, multivariable=False):
    prod = torch.as_tensor(W) * torch.as_tensor(G)
    return (prod.sum(dim=1).abs() if multivariable else prod.abs().sum(dim=1)).numpy()


def row_wanda(W, X):
    """Wanda's row score from the raw calibration inputs X (..., d_in): Σ_j |W_ij| ‖X_·j‖₂, the
    norm over every token (torch.linalg.vector_norm over the flattened leading axes)."""
    X = torch.as_tensor(X)
    norms = torch.linalg.vector_norm(X.reshape(-1, X.shape[-1]), ord=2, dim=0)
    return (torch.as_tensor(W).abs() * norms).sum(dim=1).numpy()


def row_obd(W, F):
    return (torch.as_tensor(W) ** 2 * torch.as_tensor(F)).sum(dim=1).numpy()


def per_sample_sq_grad_sum(W, b, X, loss_fn):
    """X (B, T, d_in); loss_fn(Y_b, b) the loss of sample b -> Σ_b (dL_b/dW)², one backward per sample."""
    lin = make_linear(W, b)
    total = torch.zeros_like(lin.weight)
    for s in range(X.shape[0]):
        lin.zero_grad()
        loss_fn(lin(torch.as_tensor(X[s])), s).backward()
        total += lin.weight.grad**2
    return total.detach().numpy()


def per_class_taylor(W, b, X_by_class, loss_fn):
    """(classes, d_out) Taylor scores Σ_j |W_ij G^(c)_ij|, the gradient ZEROED before each class
    (the released code's pitfall was to let it accumulate across classes)."""
    lin = make_linear(W, b)
    rows = []
    for X in X_by_class:
        lin.zero_grad()
        loss_fn(lin(torch.as_tensor(X))).backward()
        rows.append((lin.weight * lin.weight.grad).abs().sum(dim=1).detach())
    return torch.stack(rows).numpy()


def quantile_mean(S, n_quantiles=11):
    """S (classes, out) -> mean over q in linspace(0, 1, n_quantiles) of torch.quantile(S, q, dim=0)."""
    S = torch.as_tensor(S)
    q = torch.linspace(0.0, 1.0, n_quantiles, dtype=S.dtype)
    return torch.quantile(S, q, dim=0, interpolation="linear").mean(dim=0).numpy()

