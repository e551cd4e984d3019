"""Fused residual add + LayerNorm (+ the next W8A8 layers' codes): the native pass against a float64 reference
on awkward shapes, its codes against quantize_rows, the swapped output blocks against the stock ones, their
fallbacks and their checkpoints."""
import copy

import pytest
import torch

from leanformer.quant import W8A8Config, WeightOnlyConfig, kernels, load_quantized, quantize_, save_quantized
from leanformer.quant.amx import int8_kernel_available
from leanformer.quant.fusion import fuse_residual_norms_
from leanformer.quant.native import native_ops, native_status
from leanformer.quant.residual_norm import FusedResidualNorm, norm_reference

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(native_ops() is None, reason=f"native kernels: {native_status()}")


def _rows(m, n, scale=1.0, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, n, generator=g) * scale + offset, torch.randn(m, n, generator=g) * scale,
            torch.randn(n, generator=g), torch.randn(n, generator=g))


@pytest.mark.parametrize("m,n,scale,offset,eps", [(1, 1, 1, 0, 1e-5), (7, 3, 1, 0, 1e-12), (33, 17, 1, 0, 1e-5),
                                                  (100, 384, 1, 0, 1e-12), (50, 1000, 100, 1e3, 1e-5),
                                                  (20, 384, 1e-3, 5, 1e-12), (5, 31, 1e-20, 0, 1e-5)])
def test_the_pass_is_within_its_bound_of_float64_and_torch_is_too(m, n, scale, offset, eps):
    x, r, w, b = _rows(m, n, scale, offset)
    out, codes, qs, finite = native_ops().residual_layer_norm(x, r, w, b, eps, True)
    ref, bound = norm_reference(x, r, w, b, eps)
    assert ((out.double() - ref).abs() <= bound).all()
    torch_out = torch.nn.functional.layer_norm(x + r, (n,), w, b, eps)
    assert ((torch_out.double() - ref).abs() <= bound).all()  # the bound is one torch keeps as well
    want_codes, want_scale, want_finite = native_ops().quantize_rows(out)
    assert bool(finite) and bool(want_finite) and torch.equal(codes, want_codes) and torch.equal(qs, want_scale)


def test_a_nan_row_reports_not_finite_and_is_nan():
    x, r, w, b = _rows(4, 16)
    x[2, 5] = float("nan")
    out, _, _, finite = native_ops().residual_layer_norm(x, r, w, b, 1e-5, True)
    assert not bool(finite) and out[2].isnan().all() and not out[[0, 1, 3]].isnan().any()


def test_bad_operands_are_named():
    x, r, w, b = _rows(4, 16)
    with pytest.raises(RuntimeError, match="residual"):
        native_ops().residual_layer_norm(x, r[:, :8].contiguous(), w, b, 1e-5, False)
    with pytest.raises(RuntimeError, match="weight and bias"):
        native_ops().residual_layer_norm(x, r, w[:8].contiguous(), b, 1e-5, False)


def _bert(layers=2):
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


IDS = torch.randint(0, 97, (5, 21), generator=torch.Generator().manual_seed(1))


def test_w8a8_swaps_every_output_block_and_hands_over_the_codes(monkeypatch):
    model = _bert()
    report = quantize_(model, W8A8Config())
    blocks = [m for m in model.modules() if isinstance(m, FusedResidualNorm)]
    assert report.fused_norms == len(blocks) == 4 and all(b.prepare_output and not b.training for b in blocks)
    # the per-layer handover (the whole-encoder native call quantizes inside C++: test_quant_int8_encoder.py)
    monkeypatch.setattr(kernels.get_policy(), "int8_encoder", False)
    calls = []
    real = kernels.quantize_activations
    monkeypatch.setattr(kernels, "quantize_activations", lambda t: (calls.append(tuple(t.shape)), real(t))[1])
    with torch.no_grad():
        model(input_ids=IDS)
    # per layer only the attention output's input is quantized apart: q/k/v and FFN-in get the norms' codes,
    # FFN-out the GELU kernel's (a fused int8 kernel, AMX or VNNI; without one, FFN-out quantizes its own input);
    # besides, layer 0's q/k/v read the embeddings' LayerNorm (not fused), and the pooler reads the first token's slice
    ffn_out = [] if int8_kernel_available() else [(105, 128)] * 2
    assert sorted(calls) == sorted([(105, 64)] * 3 + [(5, 64)] + ffn_out)


def test_weight_only_fused_blocks_match_the_stock_ones_closely():
    fused, plain = _bert(), _bert()
    quantize_(fused, WeightOnlyConfig(bits=8, group_size=None, fuse=True, short_attention=False))
    quantize_(plain, WeightOnlyConfig(bits=8, group_size=None, fuse=False, short_attention=False))
    assert not any(isinstance(m, FusedResidualNorm) for m in plain.modules())
    assert not any(m.prepare_output for m in fused.modules() if isinstance(m, FusedResidualNorm))
    with torch.no_grad():
        a, b = fused(input_ids=IDS).last_hidden_state, plain(input_ids=IDS).last_hidden_state
    assert (a - b).abs().max() <= 1e-5 and not torch.equal(a, b)  # the fused pass ran, and stayed close


def test_with_gradients_or_dropout_the_stock_formula_runs_exactly():
    fused, plain = _bert(), _bert()
    quantize_(fused, WeightOnlyConfig(bits=8, group_size=None, fuse=True, short_attention=False))
    quantize_(plain, WeightOnlyConfig(bits=8, group_size=None, fuse=False, short_attention=False))
    a = fused(input_ids=IDS).last_hidden_state  # grad enabled, LayerNorm weights require grad
    b = plain(input_ids=IDS).last_hidden_state
    assert torch.equal(a, b)
    a.sum().backward()
    assert fused.encoder.layer[0].output.LayerNorm.weight.grad is not None
    fused.train(), plain.train()
    torch.manual_seed(5)
    with torch.no_grad():
        a = fused(input_ids=IDS).last_hidden_state
    torch.manual_seed(5)
    with torch.no_grad():
        b = plain(input_ids=IDS).last_hidden_state
    assert torch.equal(a, b)


def test_blocks_with_another_forward_are_left_alone():
    class Output(torch.nn.Module):  # the same children, a different formula (no residual)
        def __init__(self):
            super().__init__()
            self.dense, self.LayerNorm, self.dropout = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Dropout(0.1)

        def forward(self, hidden_states, input_tensor):
            return self.LayerNorm(self.dropout(self.dense(hidden_states)))

    model = torch.nn.Sequential(Output())
    quantize_(model, W8A8Config(short_attention=False), filter_fn=lambda m, n: n.endswith("dense"))
    assert fuse_residual_norms_(model) == 0 and isinstance(model[0], Output)


def test_checkpoints_restore_the_fused_blocks(tmp_path):
    model = _bert()
    quantize_(model, W8A8Config())
    save_quantized(model, tmp_path / "q")
    loaded = load_quantized(tmp_path / "q")
    assert sum(isinstance(m, FusedResidualNorm) for m in loaded.modules()) == 4
    assert type(loaded.encoder.layer[1].output.dense).__name__ == "QuantizedLinear"
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).last_hidden_state, model(input_ids=IDS).last_hidden_state)
    assert copy.deepcopy(loaded).encoder.layer[0].attention.output.stock == "BertSelfOutput"


def test_a_fused_block_recorded_for_another_module_is_a_clear_error(tmp_path):
    import json

    from leanformer.quant.serialize import CheckpointError

    model = _bert()
    quantize_(model, W8A8Config())
    path = save_quantized(model, tmp_path / "q")
    meta_file = next(p for p in path.iterdir() if p.name.endswith(".json") and p.name != "config.json")
    meta = json.loads(meta_file.read_text())
    meta["modules"]["encoder.layer.0.attention.self"] = meta["modules"].pop("encoder.layer.0.attention.output")
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="attention.self"):
        load_quantized(path)


@pytest.mark.parametrize("family", ["Roberta", "Electra", "XLMRoberta"])
def test_bert_family_copies_are_fused_too(family):
    cfg = getattr(transformers, f"{family}Config")(vocab_size=97, hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=128,
                                                   max_position_embeddings=64)
    torch.manual_seed(0)
    fused = getattr(transformers, f"{family}Model")(cfg).eval()
    plain = copy.deepcopy(fused)
    assert quantize_(fused, WeightOnlyConfig(bits=8, group_size=None, fuse=True)).fused_norms == 4
    quantize_(plain, WeightOnlyConfig(bits=8, group_size=None, fuse=False))
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (fused(input_ids=ids).last_hidden_state - plain(input_ids=ids).last_hidden_state).abs().max() <= 1e-4
