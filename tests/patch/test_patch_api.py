"""patch_ / unpatch_ mechanics: in-place swaps, shared parameters, bit-exact restore, report, clear errors."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import TOL
from patch_util import make_batch, run_step, stock_and_lean, tiny_model
from torch import nn

import leanformer
from leanformer import LeanConfig
from leanformer.patch.config import ATTENTION_MODES


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_same_parameter_objects_and_state_dict_keys(arch):
    model = tiny_model(arch)
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    report = leanformer.patch_(model)
    after = dict(model.named_parameters())
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert list(model.state_dict()) == keys
    assert len(report) == len(report.swaps) > 0


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_unpatch_restores_bit_exactly(arch):
    model = tiny_model(arch)
    originals = {name: m for name, m in model.named_modules()}
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    data = make_batch(model, 2, 9, pad_last=2)
    ref = run_step(model, data)
    leanformer.patch_(model)
    assert any(type(m).__module__.startswith("leanformer") for m in model.modules())
    leanformer.unpatch_(model)
    assert {name: m for name, m in model.named_modules()} == originals  # the very same objects
    assert all(not type(m).__module__.startswith("leanformer") for m in model.modules())
    restored = model.state_dict()
    assert restored.keys() == sd.keys() and all(torch.equal(sd[k], restored[k]) for k in sd)
    got = run_step(model, data)
    assert torch.equal(ref[0], got[0]) and all(torch.equal(ref[1][k], got[1][k]) for k in ref[1])


def test_optimizer_built_before_patch_still_trains():
    stock = tiny_model("bert")
    lean = copy.deepcopy(stock)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (stock, lean)]
    leanformer.patch_(lean)
    data = make_batch(stock, 2, 8)
    for _ in range(2):
        for m, opt in zip((stock, lean), opts):
            run_step(m, data)
            opt.step()
    for (n, a), (_, b) in zip(stock.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(a, b, **TOL[torch.float32], msg=n)


def test_report_lists_every_swap_and_prints():
    _, lean, report = stock_and_lean("gpt2")
    paths = {s.path for s in report.swaps}
    assert "transformer.h.0.attn" in paths and "transformer.h.1.mlp.act" in paths
    for s in report.swaps:
        assert type(lean.get_submodule(s.path)).__name__ == s.new_type
    text = str(report)
    assert "GPT2Attention -> LeanGPT2Attention" in text and "NewGELUActivation -> LeanGELU" in text
    assert "Conv1D -> LeanLinear" in text and f"{len(report)} modules swapped" in text
    # the attention-prob dropout is only read for its p: kept stock
    assert "transformer.h.0.attn.attn_dropout" not in paths


def test_already_patched_raises():
    model = tiny_model("bert")
    leanformer.patch_(model)
    with pytest.raises(ValueError, match="already patched"):
        leanformer.patch_(model)


def test_nothing_matched_raises():
    with pytest.raises(ValueError, match="nothing to swap"):
        leanformer.patch_(nn.Sequential(nn.ReLU(), nn.Embedding(3, 4)))


def test_unpatch_unpatched_raises():
    with pytest.raises(ValueError, match="not patched"):
        leanformer.unpatch_(nn.Linear(2, 2))


def test_unsupported_dtype_and_bad_arguments_raise():
    with pytest.raises(TypeError, match="float64"):
        leanformer.patch_(nn.Sequential(nn.Linear(3, 3)).double())
    with pytest.raises(TypeError, match="nn.Module"):
        leanformer.patch_("model")
    with pytest.raises(TypeError, match="LeanConfig"):
        leanformer.patch_(nn.Linear(2, 2), {"attention": "flash"})


def test_unpatch_after_external_change_raises():
    model = tiny_model("bert")
    leanformer.patch_(model)
    model.bert.encoder.layer[0].intermediate.dense = nn.Linear(48, 72)
    with pytest.raises(RuntimeError, match="changed after patch_"):
        leanformer.unpatch_(model)


def test_config_validation_and_json_round_trip():
    cfg = LeanConfig(attention="tempo", exclude=("cls",))
    assert LeanConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="attention"):
        LeanConfig(attention="fast")
    with pytest.raises(ValueError, match="dtypes"):
        LeanConfig(dtypes=("float64",))
    with pytest.raises(ValueError, match="linear"):
        LeanConfig(linear="yes")
    assert "auto" in ATTENTION_MODES


def test_config_switches_and_exclude():
    model = tiny_model("bert")
    report = leanformer.patch_(model, LeanConfig(attention="off", dropout=False, exclude=("cls",)))
    counts = report.counts()
    assert "attention" not in counts and "dropout" not in counts
    assert not any(s.path.startswith("cls") for s in report.swaps)
    assert counts["linear"] == 2 * 6 and counts["norm"] == 1 + 2 * 2 and counts["activation"] == 2


def test_generic_fallback_on_an_unnamed_model():
    model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(approximate="tanh"), nn.Dropout(0.1),
                          nn.Linear(16, 8), nn.SiLU())
    stock = copy.deepcopy(model)
    report = leanformer.patch_(model)
    assert report.spec == "generic" and len(report) == 6
    x = torch.randn(3, 5, 8)
    outs = []
    for m in (stock, model):
        torch.manual_seed(0)
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        outs.append((y, xi.grad, [p.grad for p in m.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], **TOL[torch.float32])
    torch.testing.assert_close(outs[0][1], outs[1][1], **TOL[torch.float32])
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    with pytest.raises(ValueError, match="nothing to swap"):
        leanformer.patch_(copy.deepcopy(stock), LeanConfig(generic=False))
