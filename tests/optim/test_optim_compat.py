"""Ours against the official apollo-torch (skipped when it is not installed): same seeds, same gradients."""
from __future__ import annotations

import pytest
import torch

from conftest import TOL
from leanformer.optim import APOLLO
from leanformer.optim.projection import next_seed

apollo_torch = pytest.importorskip("apollo_torch")


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(13, 7)), torch.nn.Parameter(torch.randn(5, 11)),
            torch.nn.Parameter(torch.randn(6))]


def test_next_seed_matches_official():
    from apollo_torch.random_projector import next_seed as official

    for seed in (1, 2, 12345, 2**62 + 3):
        assert next_seed(seed) == official(seed)


@pytest.mark.parametrize("scale_type,rank,scale", [("channel", 3, 1.0), ("tensor", 1, 128.0)])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_apollo_torch(scale_type, rank, scale, foreach):
    theirs, ours = _params(), _params()
    ref = apollo_torch.APOLLOAdamW(
        [{"params": theirs[:2], "rank": rank, "proj": "random", "scale_type": scale_type, "scale": scale,
          "update_proj_gap": 3, "proj_type": "std"}, {"params": theirs[2:]}], lr=1e-2, weight_decay=0.1)
    opt = APOLLO([{"params": ours[:2]}, {"params": ours[2:]}], lr=1e-2, rank=rank, scale_type=scale_type,
                 scale=scale, update_proj_gap=3, weight_decay=0.1, foreach=foreach)
    for _ in range(10):  # spans three projection refreshes
        grads = [torch.randn_like(p) for p in theirs]
        for ps in (theirs, ours):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        ref.step()
        opt.step()
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, **TOL[torch.float32])
