"""quantize_ and its configs on small models: swaps, reports, filters, embeddings, conv, mixed precision, bad input."""
import pytest
import torch
import torch.nn as nn

from conftest import TOL
from leanformer.quant import (EmbeddingConfig, MixedPrecisionConfig, QuantizedConv2d, QuantizedEmbedding,
                              QuantizedLinear, W8A8Config, WeightOnlyConfig, config_from_dict, quantize_,
                              quantize_module, set_policy)
from leanformer.quant.sensitivity import plan_mixed


@pytest.fixture(autouse=True)
def _fp32_policy():
    set_policy(compute_dtype="float32", allow_pack_kernels=False)  # exact comparisons in this file
    yield
    set_policy(compute_dtype="auto", allow_pack_kernels=True)


def _mlp():
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 16))


def test_quantize_swaps_linears_and_matches_dequantized_model():
    model = _mlp()
    fake = _mlp()
    fake.load_state_dict(model.state_dict())
    report = quantize_(model, WeightOnlyConfig(bits=4, group_size=32))
    assert [layer.name for layer in report.layers] == ["0", "2", "4"]
    assert all(isinstance(model[i], QuantizedLinear) for i in (0, 2, 4))
    assert report.bytes_after < report.bytes_before / 5
    for i in (0, 2, 4):
        fake[i].weight.data = model[i].quantized_weight().dequantize()
    x = torch.randn(5, 32)
    torch.testing.assert_close(model(x), fake(x), **TOL[torch.float32])
    assert "quantized 3 modules" in report.summary()


def test_filter_fn_and_nothing_matched():
    model = _mlp()
    report = quantize_(model, WeightOnlyConfig(bits=8, group_size=None), filter_fn=lambda m, name: name == "2")
    assert [layer.name for layer in report.layers] == ["2"] and isinstance(model[0], nn.Linear)
    with pytest.raises(ValueError, match="no module"):
        quantize_(model, WeightOnlyConfig(), filter_fn=lambda m, name: False)
    with pytest.raises(ValueError, match="no module"):
        quantize_(nn.Sequential(nn.ReLU()), W8A8Config())


def test_embedding_and_conv():
    emb = nn.Sequential(nn.Embedding(50, 16, padding_idx=0))
    table = emb[0].weight.detach().clone()
    quantize_(emb, EmbeddingConfig(bits=8))
    assert isinstance(emb[0], QuantizedEmbedding)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    deq = emb[0].quantized_weight().dequantize()
    torch.testing.assert_close(emb(ids), deq[ids], **TOL[torch.float32])
    assert (emb(ids) - table[ids]).abs().max() < table.abs().max() / 127  # within one int8 step per row
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    ref = nn.Conv2d(3, 8, 3, padding=1)
    ref.load_state_dict(conv[0].state_dict())
    quantize_(conv, WeightOnlyConfig(bits=4, group_size=9))
    assert isinstance(conv[0], QuantizedConv2d)
    ref.weight.data = conv[0].quantized_weight().dequantize()
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(conv(x), torch.relu(ref(x)), **TOL[torch.float32])


def test_unsupported_modules_and_configs():
    with pytest.raises(TypeError, match="cannot quantize a LayerNorm"):
        quantize_module(nn.LayerNorm(4), WeightOnlyConfig())
    with pytest.raises(TypeError, match="cannot quantize a Conv2d"):
        quantize_module(nn.Conv2d(2, 2, 1), W8A8Config())
    with pytest.raises(TypeError, match="bare Linear"):
        quantize_(nn.Linear(4, 4), WeightOnlyConfig(group_size=None))
    with pytest.raises(TypeError, match="config"):
        quantize_(_mlp(), {"bits": 4})
    with pytest.raises(ValueError, match="does not divide"):
        quantize_(nn.Sequential(nn.Linear(48, 8)), WeightOnlyConfig(bits=4, group_size=32))
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight.data[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN"):
        quantize_(model, WeightOnlyConfig(group_size=None))
    assert all(type(m) is nn.Linear for m in model)  # the failed call left every layer as it was


@pytest.mark.parametrize("bad", [dict(bits=3.5), dict(bits=9), dict(bits=True), dict(group_size=0),
                                 dict(group_size=-64), dict(scale_dtype="int8"), dict(refine_steps=-1)])
def test_config_validation(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "_")):
        WeightOnlyConfig(**bad)


def test_config_json_roundtrip():
    cfg = MixedPrecisionConfig(low=WeightOnlyConfig(bits=4, group_size=32), budget_mb=3.0)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown quantization config"):
        config_from_dict({"type": "Nope"})


def test_tied_weight_is_skipped():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight
    report = quantize_(model, WeightOnlyConfig(bits=8, group_size=None))
    assert report.skipped == {"1": "weight tied to another module"} and isinstance(model[1], nn.Linear)


def test_plan_mixed_greedy_budget():
    sens = {"a": 0.5, "b": 0.1, "c": 0.3}
    low, high = {"a": 10, "b": 10, "c": 10}, {"a": 30, "b": 15, "c": 20}
    assert plan_mixed(sens, low, high, 40) == {"c"}  # c: 0.03/byte beats a: 0.025/byte, b: 0.02
    assert plan_mixed(sens, low, high, 45) == {"c", "b"}  # a no longer fits, b still does
    assert plan_mixed(sens, low, high, 100) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="below the all-low-bit size"):
        plan_mixed(sens, low, high, 20)


def test_mixed_precision_respects_budget_on_tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)
    model = transformers.BertModel(cfg).eval()
    lows = quantize_(transformers.BertModel(cfg), WeightOnlyConfig(bits=4, group_size=32)).bytes_after
    budget = (lows + 10_000) / 1e6  # room for some, not all (all-int8 adds ~33 kB)
    report = quantize_(model, MixedPrecisionConfig(low=WeightOnlyConfig(bits=4, group_size=32), budget_mb=budget))
    assert report.bytes_after <= budget * 1e6
    assert {layer.bits for layer in report.layers} == {4, 8}


def test_act_weighting_uses_input_moments():
    from leanformer.quant.calib import input_moments
    from leanformer.quant.rtn import quantize_rtn

    model = _mlp()
    x = torch.randn(64, 32) * torch.linspace(0.1, 3.0, 32)  # very unequal input features
    cfg = WeightOnlyConfig(bits=4, group_size=32, act_weighting=True)
    with pytest.raises(ValueError, match="example_inputs"):
        quantize_(_mlp(), cfg)  # no vocabulary to draw random tokens from, and no inputs given
    moments = input_moments(model, ["0"], x)
    torch.testing.assert_close(moments["0"], x.pow(2).mean(0), **TOL[torch.float32])
    plain = quantize_rtn(model[0].weight, bits=4, group_size=32, symmetric=False, clip_search=True, refine_steps=3)
    weighted = quantize_rtn(model[0].weight, bits=4, group_size=32, symmetric=False, clip_search=True,
                            refine_steps=3, importance=moments["0"])
    out_err = lambda qw: (x @ (model[0].weight - qw.dequantize()).T).pow(2).mean()  # noqa: E731
    assert out_err(weighted) < out_err(plain)  # weighting lowers the output error it targets
    quantize_(model, cfg, example_inputs=x)
    torch.testing.assert_close(model[0].quantized_weight().dequantize(), weighted.dequantize(), **TOL[torch.float32])
    with pytest.raises(ValueError, match="importance"):
        quantize_rtn(torch.randn(4, 8), bits=4, importance=torch.ones(7))


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def test_sensitivity_with_replayed_blocks_equals_full_forwards(monkeypatch):
    from leanformer.quant import sensitivity

    model = _tiny_bert()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    before = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    lows = {n: w * 0.9 for n, w in before.items()}
    calls = []
    original = sensitivity._Replay.forward
    monkeypatch.setattr(sensitivity._Replay, "forward", lambda self, *a, **k: calls.append(1) or original(self))
    replayed = sensitivity.layer_sensitivity(model, lows)
    assert len(calls) == 2 + sum(int(n.split(".")[2]) for n in names if n.startswith("encoder.layer."))  # + verify
    init = sensitivity._BlockPrefix.__init__

    def no_prefix(self, m):
        init(self, m)
        self.blocks = None

    monkeypatch.setattr(sensitivity._BlockPrefix, "__init__", no_prefix)
    assert sensitivity.layer_sensitivity(model, lows) == replayed  # the very same floats
    assert all(torch.equal(model.get_submodule(n).weight, before[n]) for n in names)  # weights restored
    assert all(type(b).__name__ == "BertLayer" for b in model.encoder.layer)  # blocks restored


def test_prefix_replay_is_dropped_when_a_block_is_reused():
    from leanformer.quant.sensitivity import _BlockPrefix

    class Shared(nn.Module):  # the same block object applied twice: no fixed prefix to replay
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

        def forward(self, x):
            for _ in range(2):
                for layer in self.layers:
                    x = layer(x)
            return x

    model, x = Shared(), torch.randn(3, 8)
    prefix = _BlockPrefix(model)
    with prefix.recording():
        model(x)
    assert prefix.blocks is None


def test_native_clip_search_score_matches_the_eager_one():
    from leanformer.quant import rtn
    from leanformer.quant.native import native_ops

    ops = native_ops()
    if ops is None:
        pytest.skip("native ops not built here")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(37, 3, 33, generator=gen)  # odd group size: vector tails
    scale = torch.rand(37, 3, 1, generator=gen) * 0.3 + 0.01
    zero = torch.round(torch.rand(37, 3, 1, generator=gen) * 15)
    h = torch.rand(1, 3, 33, generator=gen)
    for z, hh, lo, hi in ((zero, h, 0, 15), (None, None, -8, 7), (zero, None, 0, 15)):
        q = w / scale
        q = (q + z) if z is not None else q
        q = q.round().clamp(lo, hi)
        q = (q - z) if z is not None else q
        ref = (q * scale - w).pow(2)
        ref = (ref * hh if hh is not None else ref).sum(-1, keepdim=True)
        out = ops.group_sq_err(w, scale, rtn._EMPTY if z is None else z, rtn._EMPTY if hh is None else hh,
                               float(lo), float(hi))
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)  # only the order of the 33-term sum differs
    wt = torch.randn(48, 128, generator=gen)
    kw = dict(bits=4, group_size=32, symmetric=False, clip_search=True, refine_steps=2, importance=torch.rand(128))
    fast = rtn.quantize_rtn(wt, **kw)
    set_policy(native=False)
    try:
        slow = rtn.quantize_rtn(wt, **kw)
    finally:
        set_policy(native=True)
    err = lambda qw: (wt - qw.dequantize()).pow(2).sum()  # noqa: E731
    torch.testing.assert_close(err(fast), err(slow), rtol=1e-5, atol=0)
