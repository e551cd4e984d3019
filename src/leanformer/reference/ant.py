"""Reference ANT search and rounding: the official per-alpha loop (clevercool/ANT-Quantization
``search_mse`` + the CUDA nearest-value scan) written as plain Python loops over rows/groups.

It is the yardstick for ``leanformer.quant.ant``. That module computes every alpha's error at once with a
histogram, and this one re-quantizes for each alpha, like the official code.
"""
from __future__ import annotations

import torch

from leanformer.quant.ant import DEFAULT_TYPES, SEARCH, ant_grid

__all__ = ["nearest_scan", "ant_reference"]


def nearest_scan(y: float, grid: list[float]) -> int:
    """The official ``quant_forward_cuda_kernel`` scan: walk the sorted grid and keep the last index whose
    distance is <= the best so far; stop at the first increase."""
    best, idx = float("inf"), 0
    for i, g in enumerate(grid):
        d = abs(y - g)
        if d <= best:
            best, idx = d, i
        else:
            break
    return idx


def ant_reference(weight: torch.Tensor, *, bits: int, group_size: int | None = None, granularity: str = "tensor",
                  types: tuple[str, ...] = DEFAULT_TYPES, scale_dtype: torch.dtype = torch.float16):
    """-> (codes uint8 shaped like weight, scale (N, G) scale_dtype, chosen type per (N, G) as nested lists)."""
    lo, hi = SEARCH
    if bits > 6:
        types, lo = ("int",), 95
    n, k = weight.shape[0], weight[0].numel()
    gs = k if group_size is None else group_size
    w = weight.detach().reshape(n, k // gs, gs).float()
    groups = k // gs
    best = {}  # (type, row, group) -> (mse, alpha)
    for kind in types:
        grid = ant_grid(kind, bits).tolist()
        top = max(grid)
        for r in range(n):
            for g in range(groups):
                xs = [float(v) for v in w[r, g].tolist()]
                m = max(abs(v) for v in xs) or 1.0
                best_mse, best_alpha = float("inf"), None
                for a in range(lo, hi):
                    alpha = m * (a * 0.01)
                    s = alpha / top
                    sse = sum((x - s * grid[nearest_scan(x / s, grid)]) ** 2 for x in xs)
                    if sse / gs < best_mse:  # strict: the first minimum wins, as in the official loop
                        best_mse, best_alpha = sse / gs, alpha
                best[kind, r, g] = (best_mse, best_alpha)
    chosen = [[None] * groups for _ in range(n)]
    for r in range(n):
        for g in range(groups):
            if granularity == "tensor":
                units = [(rr, gg) for rr in range(n) for gg in range(groups)]
            elif granularity == "channel":
                units = [(r, gg) for gg in range(groups)]
            else:
                units = [(r, g)]
            scores = [sum(best[kind, rr, gg][0] for rr, gg in units) for kind in types]
            chosen[r][g] = types[min(range(len(types)), key=lambda i: (scores[i], i))]
    codes = torch.zeros(w.shape, dtype=torch.uint8)
    scale = torch.zeros(n, groups, dtype=scale_dtype)
    for r in range(n):
        for g in range(groups):
            kind = chosen[r][g]
            grid = ant_grid(kind, bits).tolist()
            s = torch.tensor(best[kind, r, g][1] / max(grid), dtype=torch.float64).to(scale_dtype)
            scale[r, g] = s
            ys = (w[r, g] / s.float()).tolist()  # the same fp32 division as the fast path
            for i, y in enumerate(ys):
                codes[r, g, i] = nearest_scan(y, grid)
    return codes.reshape(weight.shape), scale, chosen
