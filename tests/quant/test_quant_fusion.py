"""fuse_feed_forward_: GELU and the next layer's input preparation inside the AMX kernels, against the unfused
modules (W8A8: int8 codes handed over; weight-only int4: the bf16 copy)."""
import pytest
import torch
import torch.nn.functional as F

from leanformer.quant import (QuantizedLinear, W4A8Config, W8A8Config, WeightOnlyConfig, load_quantized,
                              quantize_, quantize_rtn, save_quantized, set_policy)
from leanformer.quant import kernels
from leanformer.quant.amx import (amx_int8_available, amx_int8_linear, amx_int8_status, int8_kernel_available,
                                  pack_amx_weight, vnni_int8_status)
from leanformer.quant.amx_w4 import amx_w4_linear
from leanformer.quant.fusion import GELU_ABS_BOUND, fuse_feed_forward_
from leanformer.quant.modules import FusedActivation

transformers = pytest.importorskip("transformers")
needs_amx = pytest.mark.skipif(not amx_int8_available(), reason=f"AMX int8: {amx_int8_status()}")
# the W8A8 kernel's fusions run on AMX or, without it, on AVX512-VNNI
needs_int8 = pytest.mark.skipif(not int8_kernel_available(),
                                reason=f"fused int8 kernel: AMX {amx_int8_status()}; VNNI {vnni_int8_status()}")


pytestmark = pytest.mark.usefixtures("kernel_policy_restored")


def _ops():
    from leanformer.quant.native import native_ops

    return native_ops()


@needs_int8
def test_gelu_epilogue_is_within_its_bound_of_f_gelu():
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.randn(200_000) * 3,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 87.0, -87.0])])
    got = _ops().amx_gelu_(x.clone())
    assert (got - F.gelu(x)).abs().max() <= GELU_ABS_BOUND
    exact = x.double() * 0.5 * (1 + torch.erf(x.double() / 2 ** 0.5))
    # closer to the true GELU than torch's own F.gelu (1.16-1.3e-6): the piecewise polynomial of
    # tools/fit_gelu_piecewise.py is within 3.3e-7 on every float32 in [-6, 6] (checked exhaustively in a scratch
    # program); the rational erf before it reached 1.07e-6 near saturation, and was tested against 1.2e-6
    assert (got.double() - exact).abs().max() <= 4e-7
    assert (F.gelu(x).double() - exact).abs().max() > 1.1e-6  # (torch's own, for scale)
    large = (x == 100.0) | (x == 87.0)
    assert torch.equal(got[large], x[large])  # GELU(x) = x for large x, exactly
    special = _ops().amx_gelu_(torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0]))
    assert special[0] == float("inf") and special[1] == 0 and special[2].isnan()
    assert special[3] == 0 and torch.tensor(1.0).copysign(special[3]) == -1  # -0 stays -0, as F.gelu gives


def _codes(m=40, k=128, n=80, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    rs, cs, b = torch.rand(m, 1, generator=gen) * 1e-3, torch.rand(n, generator=gen) * 1e-2, torch.randn(n, generator=gen)
    return x, rs, pack_amx_weight(w), cs, b


@needs_int8
@pytest.mark.parametrize("m", [1, 33, 100])
def test_fused_gelu_is_the_epilogue_applied_to_the_exact_product(m):
    x, rs, p, cs, b = _codes(m=m)
    plain = amx_int8_linear(x, rs, p, cs, b)
    assert torch.equal(amx_int8_linear(x, rs, p, cs, b, activation="gelu"), _ops().amx_gelu_(plain.clone()))


@needs_int8
@pytest.mark.parametrize("m", [1, 31, 100])
def test_fused_output_codes_equal_quantizing_the_output(m):
    x, rs, p, cs, b = _codes(m=m, n=160)
    out, codes, scale, finite = amx_int8_linear(x, rs, p, cs, b, activation="gelu", quantize_output=True)
    want_codes, want_scale, want_finite = _ops().quantize_rows(out)
    assert finite and bool(want_finite)
    assert torch.equal(codes, want_codes) and torch.equal(scale, want_scale)


@needs_int8
def test_non_finite_outputs_are_flagged():
    x, rs, p, cs, b = _codes()
    rs[3] = float("nan")
    *_, finite = amx_int8_linear(x, rs, p, cs, b, quantize_output=True)
    assert not finite


def test_bad_activation_is_refused():
    x, rs, p, cs, b = _codes()
    with pytest.raises(ValueError, match="activation"):
        amx_int8_linear(x, rs, p, cs, b, activation="relu")
    with pytest.raises(ValueError, match="activation"):
        QuantizedLinear(64, 64, bits=8, act_bits=8, activation="tanh")


def _bert(act="gelu", layers=2):
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=256, max_position_embeddings=40, hidden_act=act)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


IDS = torch.randint(0, 97, (6, 13), generator=torch.Generator().manual_seed(1))


def _count_quantizations(monkeypatch):
    calls = []
    real = kernels.quantize_activations
    monkeypatch.setattr(kernels, "quantize_activations", lambda t: (calls.append(tuple(t.shape)), real(t))[1])
    return calls


@needs_int8
@pytest.mark.parametrize("config", [W8A8Config(), W4A8Config(act_weighting=False)], ids=["w8a8", "w4a8"])
def test_fused_bert_matches_unfused_and_skips_a_quantization(monkeypatch, config):
    fused, plain = _bert(), _bert()
    report = quantize_(fused, config)
    quantize_(plain, config.replace(fuse=False))
    assert report.fused == 2 and "fused GELU into 2" in report.summary()
    block = fused.encoder.layer[0].intermediate
    assert isinstance(block.intermediate_act_fn, FusedActivation)
    assert block.dense.activation == "gelu" and block.dense.prepare_output
    # the per-layer handover (the whole-encoder native call quantizes inside C++: test_quant_int8_encoder.py)
    monkeypatch.setattr(kernels.get_policy(), "int8_encoder", False)
    calls = _count_quantizations(monkeypatch)
    with torch.no_grad():
        want = plain(input_ids=IDS).last_hidden_state
        n_plain = len(calls)
        got = fused(input_ids=IDS).last_hidden_state
    # each layer's output.dense reused the codes handed over (2), and so did the inputs of each FFN (2) and of
    # layer 1's q/k/v (1), prepared by the fused residual + LayerNorm blocks (test_quant_residual_norm.py)
    assert len(calls) - n_plain == n_plain - 5
    # the GELUs differ by <= GELU_ABS_BOUND, which can flip an int8 code at a rounding tie: close, not equal
    cos = F.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1), dim=-1)
    assert cos.min() > 0.999


@needs_int8
def _stock_norms(monkeypatch):
    """The fused residual + LayerNorm blocks run the stock formula (they are not bit-identical to it, and these
    tests are about the GELU)."""
    from leanformer.quant.residual_norm import FusedResidualNorm

    monkeypatch.setattr(FusedResidualNorm, "_fused_ops", lambda self, h, r: None)


def test_other_kernels_apply_f_gelu_after_the_product(monkeypatch):
    _stock_norms(monkeypatch)
    fused, plain = _bert(), _bert()
    quantize_(fused, W8A8Config())
    quantize_(plain, W8A8Config(fuse=False))
    set_policy(amx_int8=False)
    with torch.no_grad():
        assert torch.equal(fused(input_ids=IDS).last_hidden_state, plain(input_ids=IDS).last_hidden_state)


@needs_int8
def test_an_activation_edited_in_between_is_quantized_afresh():
    lin1, lin2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)
    up = QuantizedLinear.from_float(lin1, quantize_rtn(lin1.weight, bits=8), act_bits=8)
    down = QuantizedLinear.from_float(lin2, quantize_rtn(lin2.weight, bits=8), act_bits=8)
    up.activation, up.prepare_output = "gelu", True
    x = torch.randn(40, 64)
    with torch.no_grad():
        h = up(x)
        h.mul_(-1)  # in place: the offered codes are now stale
        got = down(h)
        kernels._LAST.slots.clear()
        want = down(h.clone())
    assert torch.equal(got, want)


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_other_activations_are_left_alone(act):
    model = _bert(act=act)
    assert quantize_(model, W8A8Config()).fused == 0
    assert not any(isinstance(m, FusedActivation) for m in model.modules())


def test_config_rejects_a_non_bool_fuse():
    with pytest.raises(ValueError, match="fuse"):
        W8A8Config(fuse="yes")


def test_codebook_layers_are_left_alone():
    from leanformer.quant import ANTConfig

    model = _bert()
    quantize_(model, ANTConfig(bits=4, group_size=64))  # ANT stores a codebook: no fused kernel for it
    assert fuse_feed_forward_(model) == 0


W4 = WeightOnlyConfig(bits=4, group_size=64, fuse=True)  # fusion is opt-in for weight-only layers


@needs_amx
def test_w4_kernel_gelu_and_bf16_copy_are_exact_to_its_epilogue():
    model = _bert(layers=1)
    quantize_(model, W4.replace(fuse=False))
    dense = model.encoder.layer[0].intermediate.dense
    codes, zero, scale = kernels._build_amx_w4(dense)
    x = torch.randn(45, 64).to(torch.bfloat16)
    plain = amx_w4_linear(x, codes, zero, scale, 64, dense.bias)
    out, copy = amx_w4_linear(x, codes, zero, scale, 64, dense.bias, activation="gelu", bf16_output=True)
    assert torch.equal(out, _ops().amx_gelu_(plain.clone()))
    assert torch.equal(copy, out.to(torch.bfloat16))


def _count_bf16_casts(monkeypatch):
    calls = []
    real = kernels.prepare_shared

    def counting(kind, x2, prepare):
        return real(kind, x2, (lambda t: (calls.append(kind), prepare(t))[1]) if kind == kernels._CAST_BF16 else prepare)

    monkeypatch.setattr(kernels, "prepare_shared", counting)
    return calls


@needs_amx
def test_fused_w4_bert_matches_unfused_and_skips_a_cast(monkeypatch):
    fused, plain = _bert(), _bert()
    assert quantize_(fused, W4).fused == 2
    quantize_(plain, W4.replace(fuse=False))
    assert quantize_(_bert(), WeightOnlyConfig(bits=4, group_size=64)).fused == 0  # the default
    assert fused.encoder.layer[0].intermediate.dense.prepare_output
    casts = _count_bf16_casts(monkeypatch)
    with torch.no_grad():
        want = plain(input_ids=IDS).last_hidden_state
        n_plain = len(casts)
        got = fused(input_ids=IDS).last_hidden_state
    assert len(casts) - n_plain == n_plain - 2  # each layer's output.dense read the bf16 copy handed over
    assert (got - want).abs().max() < 1e-3  # only the GELUs differ (<= GELU_ABS_BOUND), no int8 rounding here
    set_policy(amx_w4=False)
    _stock_norms(monkeypatch)
    with torch.no_grad():  # the other kernels apply F.gelu after the product: the same model as unfused
        assert torch.equal(fused(input_ids=IDS).last_hidden_state, plain(input_ids=IDS).last_hidden_state)


def test_mixed_precision_fuses_too():
    from leanformer.quant import MixedPrecisionConfig

    model = _bert()
    high = MixedPrecisionConfig().high.replace(fuse=True)
    report = quantize_(model, MixedPrecisionConfig(low=W4, high=high, budget_mb=0.2),
                       example_inputs={"input_ids": IDS})
    assert report.fused == 2


def test_fusing_twice_is_a_no_op():
    model = _bert()
    quantize_(model, W8A8Config())
    assert fuse_feed_forward_(model) == 0


def test_fusion_survives_save_and_load(tmp_path):
    model = _bert()
    quantize_(model, W8A8Config())
    with torch.no_grad():
        want = model(input_ids=IDS).last_hidden_state
    save_quantized(model, tmp_path / "ck")
    loaded = load_quantized(tmp_path / "ck")
    block = loaded.encoder.layer[1].intermediate
    assert isinstance(block.intermediate_act_fn, FusedActivation) and block.dense.activation == "gelu"
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).last_hidden_state, want)
