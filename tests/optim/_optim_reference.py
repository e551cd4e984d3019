"""A plain, obviously-correct APOLLO step for tests: materialises P, R, N, s and U, as the paper writes it."""
from __future__ import annotations

import math

import torch

from leanformer.optim.projection import next_seed


def ref_projection(m: int, n: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (rank, n) if m >= n else (m, rank)
    return torch.randn(shape, generator=gen) / math.sqrt(rank)


class RefAPOLLO:
    """Single matrix, fp32, CPU. ``seed`` is the parameter's 1-based position (the official first seed)."""

    def __init__(self, *, lr, rank, scale_type, gap, scale, betas=(0.9, 0.999), eps=1e-6, wd=0.0, limit=1.01,
                 seed=1):
        self.__dict__.update(lr=lr, rank=rank, scale_type=scale_type, gap=gap, scale=scale, betas=betas, eps=eps,
                             wd=wd, limit=limit, seed=seed)
        self.t, self.m, self.v, self.prev, self.proj = 0, None, None, None, None
        self.seeds_used: list[int] = []

    def step(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g2 = g.reshape(g.shape[0], -1)
        mrows, ncols = g2.shape
        if self.t % self.gap == 0:  # refresh: draw P with the current seed, then advance it
            self.proj = ref_projection(mrows, ncols, self.rank, self.seed)
            self.seeds_used.append(self.seed)
            self.seed = next_seed(self.seed)
        r = g2 @ self.proj.t() if mrows >= ncols else self.proj.t() @ g2
        b1, b2 = self.betas
        if self.m is None:
            self.m, self.v = torch.zeros_like(r), torch.zeros_like(r)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * r
        self.v = b2 * self.v + (1 - b2) * r * r
        n = self.m / (self.v.sqrt() + self.eps)
        if self.scale_type == "channel":
            dim = 1 if mrows >= ncols else 0
            s = n.norm(dim=dim, keepdim=True) / (r.norm(dim=dim, keepdim=True) + 1e-8)
        else:
            s = n.norm() / (r.norm() + 1e-8)
        u = s * g2
        if self.limit is not None:
            if self.prev is not None and u.norm() > self.limit * (self.prev + 1e-8):
                u = u * (self.limit * (self.prev + 1e-8) / u.norm())
            self.prev = u.norm()
        step = self.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        w2 = w.reshape(mrows, ncols) - step * math.sqrt(self.scale) * u
        w2 = w2 - self.lr * self.wd * w2
        return w2.reshape(w.shape)
