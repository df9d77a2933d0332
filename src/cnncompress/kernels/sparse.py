"""Sparse inference for pruned fully connected layers: torch's CSR sparse x dense matmul, and its reference twin.

``y = x W^T + b`` with ``W`` in CSR (``crow_indices``, ``col_indices``, ``values``). The fast path is
``torch.sparse.mm(W_csr, x^T)^T``; ``reference_csr_linear`` computes the same from the raw CSR arrays with
plain numpy loops over the rows, so the two can be compared. Whether CSR wins depends on sparsity, shape and
batch (on these CPUs only at very high sparsity, ~95%, at batch 1): ``choose_path`` times both on the
layer's own weight and picks the faster, so every pruned layer says which path it runs.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from cnncompress.timing import best, time_calls


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """Dense 2-D weight -> torch sparse CSR tensor (zeros dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return weight.detach().to_sparse_csr()


class CSRWeight:
    """Holds a CSR weight for a layer; copyable and picklable (torch cannot deep-copy CSR tensors)."""

    def __init__(self, weight: torch.Tensor):
        self.tensor = weight if weight.layout == torch.sparse_csr else to_csr(weight)

    def _parts(self):
        t = self.tensor
        return t.crow_indices().clone(), t.col_indices().clone(), t.values().clone(), tuple(t.shape)

    @staticmethod
    def _rebuild(crow, col, values, shape) -> "CSRWeight":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return CSRWeight(torch.sparse_csr_tensor(crow, col, values, shape))

    def __reduce__(self):
        return CSRWeight._rebuild, self._parts()

    def __deepcopy__(self, memo) -> "CSRWeight":
        return CSRWeight._rebuild(*self._parts())


def csr_linear(x: torch.Tensor, weight_csr: "torch.Tensor | CSRWeight", bias: torch.Tensor | None) -> torch.Tensor:
    """Fast path: ``x W^T + b`` with ``W`` sparse CSR (tensor or ``CSRWeight``); ``x`` of shape (N, in)."""
    if isinstance(weight_csr, CSRWeight):
        weight_csr = weight_csr.tensor
    out = torch.sparse.mm(weight_csr, x.t().contiguous()).t()
    return out + bias if bias is not None else out


def reference_csr_linear(x: torch.Tensor, crow: np.ndarray, col: np.ndarray, values: np.ndarray,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """Reference twin: ``y[n, i] = sum_{k in row i} values[k] * x[n, col[k]] + b[i]`` with explicit row loops."""
    xs = x.detach().double().numpy()
    rows = len(crow) - 1
    out = np.zeros((xs.shape[0], rows))
    for i in range(rows):
        start, end = crow[i], crow[i + 1]
        out[:, i] = xs[:, col[start:end]] @ values[start:end].astype(np.float64)
    result = torch.from_numpy(out).to(x.dtype)
    return result + bias.detach() if bias is not None else result


@torch.no_grad()
def choose_path(weight: torch.Tensor, bias: torch.Tensor | None, batch: int = 1, repeats: int = 15,
                min_sparsity: float = 0.5) -> tuple[str, float, float]:
    """Time dense ``F.linear`` against ``csr_linear`` at ``batch``; returns (path, dense s, csr s).

    Layers below ``min_sparsity`` stay dense without timing (CSR cannot win there)."""
    sparsity = float((weight == 0).float().mean())
    if sparsity < min_sparsity:
        return "dense", float("nan"), float("nan")
    x = torch.randn(batch, weight.shape[1])
    csr = to_csr(weight)
    dense_s = best(time_calls(lambda: F.linear(x, weight, bias), repeats, warmup=1))
    csr_s = best(time_calls(lambda: csr_linear(x, csr, bias), repeats, warmup=1))
    return ("csr" if csr_s < dense_s else "dense"), dense_s, csr_s
