"""Default routing, opt-out, the paper's grouping, and the state-bytes report."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leanformer.optim import APOLLO, APOLLOMini, lean_param_groups, paper_param_groups, state_bytes


def _llama():
    from leanformer.models import build_model

    return build_model("llama-tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=48,
                       num_attention_heads=2, num_key_value_heads=2)


def _one_step(model, opt):
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def test_default_routing_puts_every_matrix_on_lowrank():
    model = _llama()
    opt = APOLLOMini(model.parameters(), lr=1e-3)
    _one_step(model, opt)
    for name, p in model.named_parameters():
        state = opt.state[p]
        if p.dim() >= 2:  # embeddings and lm_head included: rank-1 moments along the long side
            assert "norm_prev" in state and state["exp_avg"].numel() == max(p.shape), name
        else:
            assert "norm_prev" not in state and state["exp_avg"].shape == p.shape, name


def test_state_bytes_exact_and_tiny():
    model = _llama()
    opt = APOLLOMini(model.parameters(), lr=1e-3)
    _one_step(model, opt)
    expect = 0
    for p in model.parameters():  # fp32: step 4 B; low-rank: 2 * 4 * max(m, n) + prev 4 B; plain: 2 * 4 * numel
        expect += 4 + (8 * max(p.shape) + 4 if p.dim() >= 2 else 8 * p.numel())
    report = opt.state_bytes()
    assert report["state_bytes"] == expect
    assert report == state_bytes(opt)
    adam = torch.optim.AdamW(model.parameters())
    _one_step(model, adam)
    assert state_bytes(adam)["bytes_per_param"] == pytest.approx(8.0, rel=1e-3)
    assert report["state_bytes"] < 0.05 * state_bytes(adam)["state_bytes"]


def test_opt_out_group_is_plain_adamw():
    a, b = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(6, 4))
    opt = APOLLO([{"params": [a]}, {"params": [b], "lowrank": False}], lr=1e-2, rank=2)
    a.grad, b.grad = torch.randn(6, 4), torch.randn(6, 4)
    b0 = b.detach().clone()
    ref = nn.Parameter(b0.clone())
    ref.grad = b.grad.clone()
    opt.step()
    assert opt.state[a]["exp_avg"].shape == (6, 2) and opt.state[b]["exp_avg"].shape == (6, 4)
    # plain path, step 1: m = (1-b1) g, v = (1-b2) g^2, W -= lr sqrt(1-b2)/(1-b1) m/(sqrt(v)+eps)
    g = ref.grad
    m, v = 0.1 * g, 0.001 * g * g
    expect = b0 - 1e-2 * (0.001 ** 0.5) / 0.1 * m / (v.sqrt() + 1e-6)
    torch.testing.assert_close(b.detach(), expect, rtol=1e-5, atol=1e-6)
    groups = opt.state_bytes()["groups"]
    assert groups[0]["state_bytes"] < groups[1]["state_bytes"]


def test_paper_param_groups_llama():
    model = _llama()
    groups = paper_param_groups(model, rank=4)
    names = {id(p): n for n, p in model.named_parameters()}
    low = sorted(names[id(p)].split(".")[-2] for p in groups[0]["params"])
    assert low == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert groups[0]["lowrank"] is True and groups[0]["rank"] == 4 and groups[1]["lowrank"] is False
    rest = {names[id(p)] for p in groups[1]["params"]}
    assert "lm_head.weight" in rest and "model.embed_tokens.weight" in rest
    opt = APOLLO(groups, lr=1e-3, rank=1)
    _one_step(model, opt)
    assert [g["lowrank"] for g in opt.state_bytes()["groups"]] == [True, False]
    with pytest.raises(ValueError, match="no Linear module"):
        paper_param_groups(nn.Sequential(nn.Linear(3, 3)))


def test_lean_param_groups_llama():
    model = _llama()
    groups = lean_param_groups(model, rank=2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[1]["params"]} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert groups[1]["lowrank"] is False and groups[1]["moments_8bit"] is True and groups[0]["rank"] == 2
    opt = APOLLOMini(groups, lr=1e-3)
    _one_step(model, opt)
    report = opt.state_bytes()
    emb_params = groups[1]["params"]
    # 8-bit moments: 2 bytes of codes per element + two fp32 scales per block + a 4-byte step; blocks follow
    # rows (so FSDP2 shards quantize like one process), so this toy's hidden 32 costs ~2 + 8/32 bytes/param.
    from leanformer.optim import quant_state as Q

    expected = sum(2 * nb * blen + 8 * nb + 4 for nb, blen in map(Q.block_shape, emb_params))
    assert report["groups"][1]["state_bytes"] == expected and "exp_avg_q" in opt.state[emb_params[0]]
    assert report["groups"][1]["bytes_per_param"] < 2 + 8 / emb_params[0].shape[1] + 0.01
