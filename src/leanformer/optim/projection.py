"""Random projections for APOLLO, regenerated from a seed instead of stored.

Source: APOLLO (Zhu et al., arXiv 2412.05270) and its official code (``zhuhanqing/APOLLO``, PyPI
``apollo-torch`` 1.0.3). The projection P has i.i.d. N(0, 1/r) entries drawn from a ``torch.Generator`` seeded
with the parameter's seed; the smaller side of the (m, n) gradient is compressed to ``rank``:

- m >= n ("right"): P is (r, n) and R = G @ P.T is (m, r); channels are the m rows.
- m <  n ("left"):  P is (m, r) and R = P.T @ G is (r, n); channels are the n columns.

The seed sequence matches the official code: the first seed is the parameter's 1-based position in the
optimizer (over all groups), and each refresh (every ``update_proj_gap`` steps) advances it with
:func:`next_seed`. Departure: the official code stores P in the optimizer state (an object, which breaks
``torch.load(weights_only=True)``); here P is regenerated every step from ``(seed, step // gap)``, so the state
holds no projection and a resumed run draws the same P.
"""
from __future__ import annotations

import math

import torch

_ADVANCE = 0xF  # how many draws the official ``next_seed`` skips


def next_seed(seed: int) -> int:
    """The official code's seed advance: the last of 15 int64 draws from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, torch.iinfo(torch.int64).max, (_ADVANCE,), generator=gen)[-1])


class SeedChain:
    """Cache of ``seed_k = next_seed^k(base)``: the k-th projection's seed, for each base seed.

    A plain host-side cache, not optimizer state: it is rebuilt on demand after loading a checkpoint.
    """

    def __init__(self) -> None:
        self._chains: dict[int, list[int]] = {}

    def __call__(self, base: int, k: int) -> int:
        chain = self._chains.setdefault(base, [base])
        while len(chain) <= k:
            chain.append(next_seed(chain[-1]))
        return chain[k]


def is_right(rows: int, cols: int) -> bool:
    """True when the column side (n) is the one compressed, i.e. m >= n (the official ``std`` rule)."""
    return rows >= cols


def random_projection(rows: int, cols: int, rank: int, seed: int, *, device, dtype=torch.float32) -> torch.Tensor:
    """P for a global (rows, cols) matrix: (rank, cols) if rows >= cols else (rows, rank); entries N(0, 1/rank).

    Drawn in fp32 on ``device`` (as the official code), then cast to ``dtype``.
    """
    shape = (rank, cols) if is_right(rows, cols) else (rows, rank)
    gen = torch.Generator(device=device).manual_seed(seed)
    proj = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) / math.sqrt(rank)
    return proj if dtype == torch.float32 else proj.to(dtype)


def project(grad: torch.Tensor, proj: torch.Tensor, right: bool, row_offset: int = 0) -> torch.Tensor:
    """Low-rank gradient R in fp32. ``grad`` is the local (m_loc, n) block whose first row is global row
    ``row_offset``; for the left projection the result is this block's partial sum (all-reduce it if sharded)."""
    if right:
        return (grad @ proj.t()).float()  # (m_loc, n) @ (n, r) -> (m_loc, r)
    rows = proj[row_offset:row_offset + grad.shape[0]]  # (m_loc, r)
    return (rows.t() @ grad).float()  # (r, m_loc) @ (m_loc, n) -> (r, n)
