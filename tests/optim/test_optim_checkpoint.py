"""State is tensors only: torch.load(weights_only=True) works, and a resumed run is bit-identical."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from leanformer.optim import APOLLO, APOLLOMini


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 9), nn.LayerNorm(9), nn.Linear(9, 5)).to(dtype)


def _step(model, opt, t):
    gen = torch.Generator().manual_seed(100 + t)
    ids = torch.randint(0, 11, (4, 3), generator=gen)
    opt.zero_grad()
    model(ids).float().square().mean().backward()
    opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls,kw", [(APOLLO, dict(rank=2)), (APOLLOMini, {})])
def test_resume_bit_identical(dtype, cls, kw):
    kw = dict(kw, lr=1e-2, update_proj_gap=2, weight_decay=0.01)
    full = _model(dtype)
    opt = cls(full.parameters(), **kw)
    for t in range(7):
        _step(full, opt, t)

    first = _model(dtype)
    opt1 = cls(first.parameters(), **kw)
    for t in range(3):
        _step(first, opt1, t)
    buf_m, buf_o = io.BytesIO(), io.BytesIO()
    torch.save(first.state_dict(), buf_m)
    torch.save(opt1.state_dict(), buf_o)
    buf_m.seek(0), buf_o.seek(0)

    resumed = _model(dtype)
    resumed.load_state_dict(torch.load(buf_m, weights_only=True))
    opt2 = cls(resumed.parameters(), **kw)
    opt2.load_state_dict(torch.load(buf_o, weights_only=True))
    for p in resumed.parameters():  # fp32 moments survive loading into a bf16 model
        assert opt2.state[p]["exp_avg"].dtype == torch.float32
    for t in range(3, 7):
        _step(resumed, opt2, t)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_state_has_no_projection():
    model = _model(torch.float32)
    opt = APOLLO(model.parameters(), lr=1e-2, rank=2)
    _step(model, opt, 0)
    lin = model[1].weight  # (9, 6): m >= n, so R and the moments are (9, 2)
    assert set(opt.state[lin]) == {"step", "exp_avg", "exp_avg_sq", "norm_prev"}
    assert opt.state[lin]["exp_avg"].shape == (9, 2)
    assert all(isinstance(v, torch.Tensor) for s in opt.state.values() for v in s.values())
