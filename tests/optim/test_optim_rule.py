"""APOLLO's update rule against the plain reference (tests/optim/_reference.py) on small, awkward shapes."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import TOL
from leanformer.optim import APOLLO, APOLLOMini
from leanformer.optim import functional as F
from leanformer.optim.projection import SeedChain, next_seed, random_projection
from _optim_reference import RefAPOLLO, ref_projection

# (param shape, rank): tall (right projection), wide (left), square, a single row, 3-D viewed as (2, 12)
SHAPES = [((13, 7), 3), ((5, 11), 2), ((6, 6), 6), ((1, 9), 1), ((2, 3, 4), 2)]


def _grads(shape, steps, growth=1.0, noncontig=False):
    out = []
    for t in range(steps):
        g = torch.randn(tuple(reversed(shape))).permute(*reversed(range(len(shape)))) if noncontig else torch.randn(shape)
        out.append(g * growth ** t)
    return out


@pytest.mark.parametrize("shape,rank", SHAPES)
@pytest.mark.parametrize("scale_type,scale", [("channel", 1.0), ("tensor", 128.0)])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_reference(shape, rank, scale_type, scale, foreach):
    kw = dict(lr=3e-2, rank=rank, scale_type=scale_type, scale=scale)
    w0 = torch.randn(shape)
    p = torch.nn.Parameter(w0.clone())
    opt = APOLLO([p], update_proj_gap=3, weight_decay=0.05, foreach=foreach, **kw)
    ref = RefAPOLLO(gap=3, wd=0.05, **kw)
    w = w0.clone()
    for g in _grads(shape, 8, noncontig=len(shape) == 2):
        p.grad = g
        opt.step()
        w = ref.step(w, g)
        torch.testing.assert_close(p.detach(), w, **TOL[torch.float32])
    assert opt.state[p]["step"].item() == 8


def test_projection_refresh_every_gap(monkeypatch):
    seen = []
    real = F.random_projection

    def spy(rows, cols, rank, seed, **kw):
        seen.append(seed)
        return real(rows, cols, rank, seed, **kw)

    monkeypatch.setattr(F, "random_projection", spy)
    a, b = torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(4, 9))
    opt = APOLLO([a, b], lr=1e-2, rank=2, update_proj_gap=4)
    for _ in range(10):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
    # seeds start at the parameter's 1-based position and advance once per refresh (steps 0, 4, 8)
    chain = lambda s, k: s if k == 0 else chain(next_seed(s), k - 1)  # noqa: E731
    expect = [chain(pos, t // 4) for t in range(10) for pos in (1, 2)]
    assert seen == expect
    assert len(set(seen[0::2])) == 3


def test_projection_statistics_and_seed_chain():
    p = random_projection(64, 32, 16, seed=5, device="cpu")
    assert p.shape == (16, 32)
    assert random_projection(8, 32, 4, seed=5, device="cpu").shape == (8, 4)
    torch.testing.assert_close(p, ref_projection(64, 32, 16, 5), rtol=0, atol=0)
    big = random_projection(4096, 512, 64, seed=1, device="cpu")
    assert abs(big.var().item() - 1 / 64) < 1e-3 and abs(big.mean().item()) < 1e-3
    chain = SeedChain()
    assert chain(3, 0) == 3 and chain(3, 2) == next_seed(next_seed(3))


def test_scaling_factor_closed_form():
    """betas = 0 and eps = 0: N = sign(R), so s_c = sqrt(r) / ||R_c|| and dW = -lr * s * G at step 1."""
    torch.manual_seed(1)
    g = torch.randn(9, 4)
    for scale_type in ("channel", "tensor"):
        p = torch.nn.Parameter(torch.zeros(9, 4))
        p.grad = g
        APOLLO([p], lr=0.5, rank=2, betas=(0.0, 0.0), eps=0.0, scale_type=scale_type).step()
        r = g @ ref_projection(9, 4, 2, seed=1).t()  # (9, 2): rows are the channels
        s = math.sqrt(2) / r.norm(dim=1, keepdim=True) if scale_type == "channel" else math.sqrt(r.numel()) / r.norm()
        torch.testing.assert_close(p.detach(), -0.5 * s * g, **TOL[torch.float32])


def test_norm_growth_limiter():
    """A 1000x gradient spike after steady steps: ||U_t|| is held to 1.01 ||U_{t-1}||; without the limiter it
    jumps (N = M / sqrt(V) grows when V still remembers small gradients)."""
    shape, b1, b2 = (12, 5), 0.9, 0.999
    grads = [torch.randn(shape) * (1000.0 if t == 25 else 1.0) for t in range(27)]
    norms = {}
    for limit in (1.01, None):
        p = torch.nn.Parameter(torch.zeros(shape))
        opt = APOLLOMini([p], lr=1e-2, norm_growth_limit=limit, betas=(b1, b2))
        ref = RefAPOLLO(lr=1e-2, rank=1, scale_type="tensor", gap=200, scale=128.0, betas=(b1, b2), limit=limit)
        w, out = torch.zeros(shape), []
        for t, g in enumerate(grads, start=1):
            before = p.detach().clone()
            p.grad = g
            opt.step()
            w = ref.step(w, g)
            step_size = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            out.append((p.detach() - before).norm().item() / step_size)  # ||U_t|| * lr * sqrt(scale)
        torch.testing.assert_close(p.detach(), w, **TOL[torch.float32])
        norms[limit] = out
    limited = [b / a for a, b in zip(norms[1.01], norms[1.01][1:])]
    assert all(r <= 1.01 * (1 + 1e-5) for r in limited)
    assert max(b / a for a, b in zip(norms[None], norms[None][1:])) > 1.5


def test_bf16_params_keep_fp32_state():
    torch.manual_seed(0)
    w0 = torch.randn(16, 8)
    p = torch.nn.Parameter(w0.to(torch.bfloat16))
    opt = APOLLO([p], lr=1e-2, rank=2)
    ref = RefAPOLLO(lr=1e-2, rank=2, scale_type="channel", gap=200, scale=1.0)
    w = w0.to(torch.bfloat16).float()
    for g in _grads((16, 8), 3):
        p.grad = g.to(torch.bfloat16)
        opt.step()
        w = ref.step(w, g.to(torch.bfloat16).float())
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(p.detach().float(), w, **TOL[torch.bfloat16])
