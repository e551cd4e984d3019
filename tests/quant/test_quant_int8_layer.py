"""The fused-int8 BERT layer (int8_layer.py): bit-identical to the same layer's module calls, really taken where it
applies, and left for the module calls wherever anything could tell the difference."""
import pytest
import torch

from leanformer.quant import (W4A8Config, W8A8Config, WeightOnlyConfig, load_quantized, quantize_, save_quantized,
                              set_policy)
from leanformer.quant.amx import int8_kernel_available
from leanformer.quant.native import native_ops, native_status

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.skipif(native_ops() is None, reason=f"native kernels: {native_status()}"),
              pytest.mark.skipif(native_ops() is not None and not int8_kernel_available(),
                                 reason="no fused int8 kernel (AMX or AVX512-VNNI) on this CPU"),
              pytest.mark.usefixtures("kernel_policy_restored")]

from leanformer.quant import fast_layer, int8_layer  # noqa: E402  (imports transformers)
from leanformer.quant.modules import QuantizedLinear  # noqa: E402

GEN = torch.Generator().manual_seed(3)
IDS = torch.randint(0, 101, (5, 19), generator=GEN)
MASK = (torch.arange(19)[None, :] < torch.tensor([19, 3, 11, 1, 17])[:, None]).long()  # padded batch


def _bert(layers=2):
    # hidden 64 and intermediate 192: the fused int8 kernels need K % 64 == 0 and N % 16 == 0
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=192, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


@pytest.fixture
def taken(monkeypatch):
    """The layers that ran the int8 sequence, in call order (with the whole-encoder call, which would take W8A8
    encoders from it, switched off: test_quant_int8_encoder.py tests that one)."""
    set_policy(int8_encoder=False)
    calls = []
    real = int8_layer.run_int8_layer
    monkeypatch.setattr(fast_layer, "run_int8_layer", lambda plan, *a: (calls.append(plan), real(plan, *a))[1])
    return calls


def _outputs(model, int8_layers: bool, **inputs):
    set_policy(int8_layers=int8_layers)
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state, out.pooler_output


@pytest.mark.parametrize("config", [W8A8Config(), W4A8Config(group_size=32)], ids=["w8a8", "w4a8"])
@pytest.mark.parametrize("inputs", [dict(input_ids=IDS, attention_mask=MASK), dict(input_ids=IDS[:1, :7])],
                         ids=["padded_batch", "one_sentence"])
def test_the_sequence_gives_the_module_calls_outputs_bit_for_bit(config, inputs, taken):
    model = _bert()
    quantize_(model, config)
    fast = _outputs(model, True, **inputs)
    assert len(taken) == 2
    slow = _outputs(model, False, **inputs)
    assert len(taken) == 2  # the policy switch turns it off
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_the_sequence_skips_the_quantized_modules_calls(monkeypatch, taken):
    model = _bert()
    quantize_(model, W8A8Config())
    calls = []
    real = QuantizedLinear.forward
    monkeypatch.setattr(QuantizedLinear, "forward", lambda self, *a, **k: (calls.append(self), real(self, *a, **k))[1])
    _outputs(model, True, input_ids=IDS)
    assert calls == [model.pooler.dense]  # the pooler is not part of a layer
    calls.clear()
    _outputs(model, False, input_ids=IDS)
    assert len(calls) == 2 * 6 + 1


def test_a_row_that_is_not_finite_gives_the_module_calls_result(taken):
    model = _bert()
    quantize_(model, W8A8Config())
    layer = model.encoder.layer[0]
    x = torch.randn(3, 7, 64, generator=GEN)
    x[1, 2] = float("nan")  # its codes, then attention rows and norm outputs, are not finite: codes made afresh
    x[2, 4, 5] = float("inf")
    with torch.no_grad():
        set_policy(int8_layers=True)
        fast = layer(x)
        set_policy(int8_layers=False)
        slow = layer(x)
    assert len(taken) == 1
    torch.testing.assert_close(fast, slow, rtol=0, atol=0, equal_nan=True)


def _hook_targets(model):
    layer = model.encoder.layer[0]
    return {"query": layer.attention.self.query, "self_output": layer.attention.output,
            "dropout": layer.output.dropout,
            "intermediate": layer.intermediate, "gelu": layer.intermediate.intermediate_act_fn,
            "output_dense": layer.output.dense}


@pytest.mark.parametrize("target", list(_hook_targets(_bert(1))))
def test_a_hooked_module_keeps_the_module_calls_and_its_hook_fires(target, taken):
    model = _bert(1)
    quantize_(model, W8A8Config())
    seen = []
    _hook_targets(model)[target].register_forward_pre_hook(lambda *a: seen.append(1))
    fast, _ = _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    assert taken == [] and seen == [1]
    assert torch.equal(fast, _outputs(model, False, input_ids=IDS, attention_mask=MASK)[0])


def test_gradients_training_and_odd_inputs_keep_the_module_calls(taken):
    model = _bert(1)
    quantize_(model, W8A8Config())
    layer = model.encoder.layer[0]
    set_policy(int8_layers=True)
    x = torch.randn(2, 5, 64, generator=GEN)
    layer(x)  # gradients on
    model.train()
    with torch.no_grad():
        layer(x)
    model.eval()
    with torch.no_grad():
        strided = layer(x.transpose(0, 1).contiguous().transpose(0, 1))  # the same values, not contiguous
        assert taken == []
        assert torch.equal(layer(x), strided)
    assert len(taken) == 1


@pytest.mark.parametrize("config", [WeightOnlyConfig(bits=4, group_size=32), W8A8Config(fuse=False)],
                         ids=["weight_only", "w8a8_unfused"])
def test_layers_off_the_fused_int8_kernels_keep_the_module_calls(config, taken):
    model = _bert(1)
    quantize_(model, config)
    _outputs(model, True, input_ids=IDS)
    assert taken == []


def test_a_loaded_checkpoint_takes_the_sequence(tmp_path, taken):
    model = _bert()
    quantize_(model, W8A8Config())
    expected = _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    save_quantized(model, tmp_path / "q")
    taken.clear()
    loaded = load_quantized(tmp_path / "q")
    got = _outputs(loaded, True, input_ids=IDS, attention_mask=MASK)
    assert len(taken) == 2
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


# --- the kernels' residual-norm epilogue (amx.run_amx_int8_norm), on whichever fused int8 kernel this CPU has
def _norm_operands(m, n, k, gen):
    from leanformer.quant.amx import pack_amx_weight

    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    xs, cs = torch.rand(m, 1, generator=gen) * 0.02, torch.rand(n, generator=gen) * 0.02
    bias, residual = torch.randn(n, generator=gen), torch.randn(m, n, generator=gen) * 3
    gamma, beta = torch.rand(n, generator=gen) + 0.5, torch.randn(n, generator=gen)
    return xq, xs, pack_amx_weight(w), cs, bias, residual, gamma, beta


@pytest.mark.parametrize("m, n, k", [(1, 16, 64), (7, 48, 128), (9, 64, 64), (33, 32, 192), (70, 384, 384)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_norm_epilogue_equals_the_product_then_the_fused_norm(m, n, k, bias):
    from leanformer.quant.amx import run_amx_int8, run_amx_int8_norm

    ops = native_ops()
    xq, xs, packed, cs, b, residual, gamma, beta = _norm_operands(m, n, k, torch.Generator().manual_seed(m * n + k))
    b = b if bias else None
    got = run_amx_int8_norm(ops, xq, xs, packed, cs, b, residual, gamma, beta, 1e-12)
    h = run_amx_int8(ops, xq, xs, packed, cs, b, 0, False)
    want = ops.residual_layer_norm(h, residual, gamma, beta, 1e-12, True)
    for a, e in zip(got[:3], want[:3]):
        assert torch.equal(a, e)
    assert got[3] is True and bool(want[3])


def test_the_norm_epilogue_reports_rows_that_are_not_finite():
    from leanformer.quant.amx import run_amx_int8, run_amx_int8_norm

    ops = native_ops()
    xq, xs, packed, cs, b, residual, gamma, beta = _norm_operands(12, 32, 64, torch.Generator().manual_seed(5))
    residual[3, 7] = float("inf")
    out, _, _, finite = run_amx_int8_norm(ops, xq, xs, packed, cs, b, residual, gamma, beta, 1e-5)
    h = run_amx_int8(ops, xq, xs, packed, cs, b, 0, False)
    want = ops.residual_layer_norm(h, residual, gamma, beta, 1e-5, True)
    assert finite is False and not bool(want[3])
    torch.testing.assert_close(out, want[0], rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(out[torch.arange(12) != 3]).all()


def test_the_norm_epilogue_names_bad_operands():
    from leanformer.quant.amx import run_amx_int8_norm

    ops = native_ops()
    xq, xs, packed, cs, b, residual, gamma, beta = _norm_operands(8, 32, 64, torch.Generator().manual_seed(6))
    with pytest.raises(RuntimeError, match="residual"):
        run_amx_int8_norm(ops, xq, xs, packed, cs, b, residual[:, :16].contiguous(), gamma, beta, 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        run_amx_int8_norm(ops, xq, xs, packed, cs, b, residual.double(), gamma, beta, 1e-5)
    with pytest.raises(RuntimeError, match="norm weight and bias"):
        run_amx_int8_norm(ops, xq, xs, packed, cs, b, residual, gamma[:16].contiguous(), beta, 1e-5)


@pytest.mark.parametrize("m, n, k", [(1, 16, 64), (7, 48, 128), (9, 64, 64), (33, 32, 192), (70, 1536, 384)])
@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_the_codes_only_product_gives_the_full_products_codes(m, n, k, act, bias):
    from leanformer.quant.amx import amx_int8_available, run_amx_int8, run_amx_int8_codes

    ops = native_ops()
    xq, xs, packed, cs, b, *_ = _norm_operands(m, n, k, torch.Generator().manual_seed(m + n + k))
    b = b if bias else None
    codes, scale, finite = run_amx_int8_codes(ops, xq, xs, packed, cs, b, act)
    _, want_codes, want_scale, want_finite = run_amx_int8(ops, xq, xs, packed, cs, b, act, True)
    assert torch.equal(codes, want_codes) and torch.equal(scale, want_scale)
    assert finite is want_finite is True
    op = ops.amx_int8_linear_codes if amx_int8_available() else ops.vnni_int8_linear_codes
    assert op(xq, xs, packed, cs, torch.empty(0) if b is None else b, act)[0].shape == (0, n)  # no float output


def test_the_codes_only_product_reports_rows_that_are_not_finite():
    from leanformer.quant.amx import run_amx_int8, run_amx_int8_codes

    ops = native_ops()
    xq, xs, packed, cs, b, *_ = _norm_operands(12, 32, 64, torch.Generator().manual_seed(7))
    xs[5] = float("inf")  # row 5's sums rescale to inf or NaN
    codes, scale, finite = run_amx_int8_codes(ops, xq, xs, packed, cs, b, 1)
    _, want_codes, want_scale, want_finite = run_amx_int8(ops, xq, xs, packed, cs, b, 1, True)
    assert finite is False and want_finite is False
    rows = torch.arange(12) != 5
    assert torch.equal(codes[rows], want_codes[rows]) and torch.equal(scale[rows], want_scale[rows])


def test_an_intermediate_row_that_is_not_finite_runs_the_product_again_with_its_output(monkeypatch, taken):
    from leanformer.quant import kernels

    model = _bert(1)
    quantize_(model, W8A8Config())
    inter = model.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        inter.bias[7] = float("inf")  # every row of the intermediate output holds an inf
    full_calls = []
    real = kernels.run_amx_int8
    monkeypatch.setattr(kernels, "run_amx_int8", lambda *a: (full_calls.append(a[-2]), real(*a))[1])
    fast = _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    assert len(taken) == 1 and full_calls.count(1) == 1  # the GELU product ran again, with its output
    slow = _outputs(model, False, input_ids=IDS, attention_mask=MASK)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_query_key_and_value_run_as_one_stacked_product(monkeypatch, taken):
    from leanformer.quant import amx

    model = _bert(1)
    quantize_(model, W8A8Config())
    widths = []
    real = int8_layer.run_amx_int8
    monkeypatch.setattr(int8_layer, "run_amx_int8", lambda ops, xq, xs, packed, *a: (
        widths.append(packed.shape[0] * amx.TILE_ROWS), real(ops, xq, xs, packed, *a))[1])
    _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    assert widths == [3 * 64]


def test_the_stacked_weight_follows_a_state_dict_loaded_into_one_of_the_three(taken):
    model, donor = _bert(1), _bert(1)
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(torch.randn(p.shape, generator=GEN) * 0.05)
    quantize_(model, W8A8Config())
    quantize_(donor, W8A8Config())
    before = _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    model.encoder.layer[0].attention.self.key.load_state_dict(donor.encoder.layer[0].attention.self.key.state_dict())
    fast = _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    slow = _outputs(model, False, input_ids=IDS, attention_mask=MASK)
    assert len(taken) == 2 and not torch.equal(fast[0], before[0])
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_a_key_without_bias_keeps_three_products(taken):
    model = _bert(1)
    quantize_(model, W8A8Config())
    sa = model.encoder.layer[0].attention.self
    sa.key._buffers["bias"] = None  # BERT variants without a key bias (e.g. some ports) still take the sequence
    assert int8_layer._stacked_qkv_weight((sa.query, sa.key, sa.value)) is None
    fast = _outputs(model, True, input_ids=IDS, attention_mask=MASK)
    slow = _outputs(model, False, input_ids=IDS, attention_mask=MASK)
    assert len(taken) == 1
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
