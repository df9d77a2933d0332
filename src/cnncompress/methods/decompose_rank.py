"""Rank selection for the tensor decompositions (``cp``, ``tucker``, ``tt``).

A ``rank`` option is one of

* an ``int`` r: used as is (clipped to the largest meaningful rank of that mode / bond);
* a ``float`` f in (0, 1]: a fraction of the *full* rank (Tucker: ``ceil(f * C)`` per mode; TT: ``ceil(f * r_max)``
  per bond; CP: ``ceil(f * R_eq)`` with ``R_eq = Cout*Cin*kh*kw / (Cout + Cin + kh + kw)``, the rank at which the
  CP layers hold as many parameters as the original, since a 4-way tensor has no cheap "full" CP rank);
* ``"auto"``: the **explained-energy** criterion.  For a matrix unfolding with singular values s_1 >= s_2 >= ...
  the rank is the smallest r with ``sum_{i<=r} s_i^2 >= energy * sum_i s_i^2`` (default ``energy=0.9``).
  Tucker-2 applies it to the mode-0 (Cout x Cin*kh*kw) and mode-1 (Cin x Cout*kh*kw) unfoldings (Kim et al.
  2015 use VBMF on the same unfoldings; energy is the simpler, deterministic stand-in).  TT applies it to every
  TT-SVD unfolding (exactly the truncation TT-SVD itself performs, Oseledets 2011).  CP takes the larger of the two
  Tucker-2 ranks (the CP rank is at least every multilinear rank, so this is a lower bound at that energy).

Memory: singular values of an unfolding need only that unfolding (the weight itself, reshaped), so nothing larger
than the weight tensor is materialised here.
"""
from __future__ import annotations

import math

import numpy as np

Rank = "int | float | str | list[int]"


def energy_rank(matrix: np.ndarray, energy: float) -> int:
    """Smallest r with sum_{i<=r} s_i^2 >= energy * sum s_i^2 (s: singular values of ``matrix``)."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = float(np.sum(s ** 2))
    if total == 0.0:
        return 1
    cumulative = np.cumsum(s ** 2) / total
    return int(min(len(s), np.searchsorted(cumulative, energy - 1e-12) + 1))


def check_energy(energy: float) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    return float(energy)


def check_rank(rank) -> None:
    """Raise ValueError unless ``rank`` is a positive int, a fraction in (0, 1], "auto" or a list of positive ints."""
    if isinstance(rank, bool):
        raise ValueError(f"rank must be an int, a fraction in (0, 1] or 'auto', got {rank!r}")
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        return
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"a fractional rank must be in (0, 1], got {rank}")
        return
    if isinstance(rank, str):
        if rank != "auto":
            raise ValueError(f"rank must be an int, a fraction in (0, 1] or 'auto', got {rank!r}")
        return
    if isinstance(rank, (list, tuple)) and rank and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1
                                                        for r in rank):
        return
    raise ValueError(f"rank must be an int, a fraction in (0, 1], 'auto' or a list of positive ints, got {rank!r}")


def mode_rank(rank, full: int, unfolding: np.ndarray | None, energy: float) -> int:
    """One mode's rank from an int / fraction / "auto" (``unfolding`` is only read for "auto")."""
    if isinstance(rank, str):
        return max(1, min(full, energy_rank(unfolding, energy)))
    if isinstance(rank, float):
        return max(1, min(full, math.ceil(rank * full)))
    return max(1, min(full, int(rank)))


def tucker2_ranks(weight: np.ndarray, rank, energy: float) -> tuple[int, int]:
    """(R_out, R_in) for a conv weight (Cout, Cin, kh, kw)."""
    cout, cin = weight.shape[:2]
    if isinstance(rank, (list, tuple)):
        if len(rank) != 2:
            raise ValueError(f"tucker rank list must be [rank_out, rank_in], got {list(rank)}")
        return min(cout, rank[0]), min(cin, rank[1])
    out_unf = weight.reshape(cout, -1) if rank == "auto" else None
    in_unf = np.moveaxis(weight, 1, 0).reshape(cin, -1) if rank == "auto" else None
    return mode_rank(rank, cout, out_unf, energy), mode_rank(rank, cin, in_unf, energy)


def cp_rank(weight: np.ndarray, rank, energy: float) -> int:
    """CP rank for a conv weight (Cout, Cin, kh, kw); see the module docstring."""
    if isinstance(rank, (list, tuple)):
        raise ValueError("cp takes a single rank, not a list")
    cout, cin, kh, kw = weight.shape
    if isinstance(rank, str):
        return max(tucker2_ranks(weight, "auto", energy))
    if isinstance(rank, float):
        equal_params = cout * cin * kh * kw / (cout + cin + kh + kw)
        return max(1, math.ceil(rank * equal_params))
    return int(rank)


def tt_full_ranks(dims: list[int]) -> list[int]:
    """Largest useful TT ranks for a tensor with (merged) mode sizes ``dims``: r_k = min(prod left, prod right)."""
    ranks = [1]
    for k in range(1, len(dims)):
        ranks.append(min(math.prod(dims[:k]), math.prod(dims[k:])))
    return ranks + [1]


def tt_ranks(tensor: np.ndarray | None, dims: list[int], rank, energy: float) -> list[int]:
    """TT ranks [1, r_1, ..., r_{d-1}, 1] for a tensor whose interleaved (merged) modes are ``dims``.

    ``tensor`` (only read for "auto") must already be in TT order (d merged modes), e.g. shape ``dims``.
    """
    full = tt_full_ranks(dims)
    d = len(dims)
    if isinstance(rank, (list, tuple)):
        if len(rank) != d - 1:
            raise ValueError(f"tt rank list needs {d - 1} inner ranks for {d} cores, got {list(rank)}")
        return [1] + [min(int(r), f) for r, f in zip(rank, full[1:-1])] + [1]
    ranks = [1]
    for k in range(1, d):
        unfolding = tensor.reshape(math.prod(dims[:k]), -1) if rank == "auto" else None
        ranks.append(mode_rank(rank, full[k], unfolding, energy))
    return ranks + [1]


def balanced_factors(n: int, d: int) -> list[int]:
    """Split n into d integer factors as equal as possible (largest first), e.g. 1024, 3 -> [16, 8, 8]."""
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    factors = [1] * d
    for prime in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= prime
    return sorted(factors, reverse=True)
