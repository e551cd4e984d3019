"""The W8A8 encoder in one native call (int8_encoder.py, csrc/int8_encoder.cpp): bit-identical to the layers' own
paths (the per-layer native sequence and the module calls), taken where it applies, and left for the layers wherever
anything could tell the difference."""
import pytest
import torch

from leanformer.quant import W4A8Config, W8A8Config, load_quantized, quantize_, save_quantized, set_policy
from leanformer.quant.amx import int8_kernel_available
from leanformer.quant.native import native_ops, native_status

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.skipif(native_ops() is None, reason=f"native kernels: {native_status()}"),
              pytest.mark.skipif(native_ops() is not None and not int8_kernel_available(),
                                 reason="no fused int8 kernel (AMX or AVX512-VNNI) on this CPU"),
              pytest.mark.usefixtures("kernel_policy_restored")]

from leanformer.quant import fast_layer, int8_encoder, int8_layer  # noqa: E402  (imports transformers)

GEN = torch.Generator().manual_seed(11)
IDS = torch.randint(0, 101, (5, 19), generator=GEN)
MASK = (torch.arange(19)[None, :] < torch.tensor([19, 3, 11, 1, 17])[:, None]).long()  # padded batch


def _bert(layers=3, heads=4):
    # hidden 64 and intermediate 192: the fused int8 kernels need K % 64 == 0 and N % 16 == 0
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=192, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


@pytest.fixture
def calls(monkeypatch):
    """What each forward ran: "encoder" for a finished native encoder call, "layer" per run_int8_layer."""
    seen = []
    real_encoder, real_layer = int8_encoder.run_int8_encoder, int8_layer.run_int8_layer

    def encoder(*a):
        out = real_encoder(*a)
        if out is not None:
            seen.append("encoder")
        return out

    monkeypatch.setattr(fast_layer, "run_int8_encoder", encoder)
    monkeypatch.setattr(fast_layer, "run_int8_layer", lambda *a: (seen.append("layer"), real_layer(*a))[1])
    return seen


def _outputs(model, **inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state, out.pooler_output


def _paths(model, **inputs):
    """The outputs with the encoder call, with the per-layer sequence, and with the module calls."""
    results = []
    for encoder, layers in ((True, True), (False, True), (False, False)):
        set_policy(int8_encoder=encoder, int8_layers=layers)
        results.append(_outputs(model, **inputs))
    set_policy(int8_encoder=True, int8_layers=True)
    return results


@pytest.mark.parametrize("inputs", [dict(input_ids=IDS, attention_mask=MASK), dict(input_ids=IDS[:1, :7]),
                                    dict(input_ids=IDS[:, :17], attention_mask=torch.ones(5, 17, dtype=torch.long)),
                                    dict(input_ids=IDS[:2, :1])],
                         ids=["padded_batch", "one_sentence", "mask_of_ones", "one_token"])
def test_the_encoder_call_gives_the_layers_outputs_bit_for_bit(inputs, calls):
    model = _bert()
    model.encoder.layer[1].output.LayerNorm.eps = 0.5  # each norm's own eps reaches the kernels
    quantize_(model, W8A8Config())
    assert type(model.encoder) is fast_layer.FastBertEncoder
    fast, layers, modules = _paths(model, **inputs)
    assert calls == ["encoder", "layer", "layer", "layer"]
    for a, b, c in zip(fast, layers, modules):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_the_encoder_call_is_one_native_call(monkeypatch, calls):
    model = _bert()
    quantize_(model, W8A8Config())
    real = int8_layer.run_amx_int8
    products = []
    monkeypatch.setattr(int8_layer, "run_amx_int8", lambda *a: (products.append(1), real(*a))[1])
    _outputs(model, input_ids=IDS, attention_mask=MASK)
    assert calls == ["encoder"] and products == []


def test_a_float_mask_takes_the_encoder_call(calls):
    model = _bert(2)
    quantize_(model, W8A8Config())
    layers, x = model.encoder.layer, torch.randn(5, 19, 64, generator=GEN)
    additive = torch.zeros(5, 1, 1, 19)
    additive[MASK[:, None, None, :] == 0] = float("-inf")
    additive[0, 0, 0, 3] = -2.5  # a soft penalty too
    with torch.no_grad():
        got = int8_encoder.run_int8_encoder(layers, x, additive)
        want = x
        set_policy(int8_encoder=False)
        for layer in layers:
            want = layer(want, additive)
    assert got is not None and torch.equal(got, want)


@pytest.mark.parametrize("where", ["input", "layer_norm"])
def test_a_step_that_is_not_finite_stops_the_call_and_the_layers_give_the_result(where, calls):
    model = _bert()
    quantize_(model, W8A8Config())
    x = torch.randn(3, 7, 64, generator=GEN)
    if where == "input":
        x[1, 2, 5] = float("nan")
    else:  # layer 1's second norm outputs inf: the call stops in its middle
        with torch.no_grad():
            model.encoder.layer[1].output.LayerNorm.weight[3] = float("inf")
    with torch.no_grad():
        weights, eps, heads, scaling = int8_encoder.int8_encoder_weights(model.encoder.layer, x)
        out, done = native_ops().int8_bert_encoder(x, torch.empty(0), weights, eps, heads, scaling,
                                                   int8_encoder.amx_int8_available())
        assert not bool(done) and out.numel() == 0
        fast = model.encoder(x).last_hidden_state
        assert calls == ["layer"] * 3  # the layers' own path, from the start
        set_policy(int8_encoder=False, int8_layers=False)
        slow = model.encoder(x).last_hidden_state
    torch.testing.assert_close(fast, slow, rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(fast).all()


def test_a_hooked_layer_keeps_the_layers_and_its_hook_fires(calls):
    model = _bert()
    quantize_(model, W8A8Config())
    seen = []
    model.encoder.layer[1].register_forward_hook(lambda *a: seen.append(1))
    fast = _outputs(model, input_ids=IDS, attention_mask=MASK)
    assert seen == [1] and calls == ["layer"] * 3
    set_policy(int8_encoder=False, int8_layers=False)
    assert all(torch.equal(a, b) for a, b in zip(fast, _outputs(model, input_ids=IDS, attention_mask=MASK)))


def test_extra_outputs_keep_the_layers(calls):
    model = _bert()
    quantize_(model, W8A8Config())
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
    assert "encoder" not in calls and len(out.hidden_states) == 4
    set_policy(int8_encoder=False, int8_layers=False)
    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
    for a, b in zip(out.hidden_states, want.hidden_states):
        assert torch.equal(a, b)


def test_gradients_training_and_odd_inputs_keep_the_layers(calls):
    model = _bert(1)
    quantize_(model, W8A8Config())
    x = torch.randn(2, 5, 64, generator=GEN)
    model.encoder(x)  # gradients on
    model.train()
    with torch.no_grad():
        model.encoder(x)
    model.eval()
    with torch.no_grad():
        strided = model.encoder(x.transpose(0, 1).contiguous().transpose(0, 1)).last_hidden_state
        assert calls == []
        long = torch.randn(1, 300, 64, generator=GEN)  # past the short attention kernel's keys
        model.encoder(long)
        assert "encoder" not in calls
        assert torch.equal(model.encoder(x).last_hidden_state, strided)
    assert calls[-1] == "encoder" and calls.count("encoder") == 1


@pytest.mark.parametrize("case", ["w4a8_layer", "one_layer_unquantized", "policy_off"])
def test_encoders_not_all_w8a8_keep_the_layers(case, calls):
    model = _bert()
    if case == "w4a8_layer":
        quantize_(model, W8A8Config(), filter_fn=lambda mod, name: not name.startswith("encoder.layer.1."))
        quantize_(model, W4A8Config(group_size=32), filter_fn=lambda mod, name: name.startswith("encoder.layer.1."))
    elif case == "one_layer_unquantized":
        quantize_(model, W8A8Config(), filter_fn=lambda mod, name: name != "encoder.layer.2.output.dense")
    else:
        quantize_(model, W8A8Config())
        set_policy(int8_encoder=False)
    fast = _outputs(model, input_ids=IDS, attention_mask=MASK)
    assert "encoder" not in calls and calls
    set_policy(int8_encoder=False, int8_layers=False)
    assert all(torch.equal(a, b) for a, b in zip(fast, _outputs(model, input_ids=IDS, attention_mask=MASK)))


def test_a_loaded_checkpoint_takes_the_encoder_call(tmp_path, calls):
    model = _bert()
    quantize_(model, W8A8Config())
    expected = _outputs(model, input_ids=IDS, attention_mask=MASK)
    save_quantized(model, tmp_path / "q")
    calls.clear()
    loaded = load_quantized(tmp_path / "q")
    assert type(loaded.encoder) is fast_layer.FastBertEncoder
    got = _outputs(loaded, input_ids=IDS, attention_mask=MASK)
    assert calls == ["encoder"]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_a_bias_changed_in_place_is_read_by_the_next_call(calls):
    model = _bert(1)
    quantize_(model, W8A8Config())
    before = _paths(model, input_ids=IDS, attention_mask=MASK)
    with torch.no_grad():  # the stacked q/k/v bias is kept while the three biases are unchanged
        model.encoder.layer[0].attention.self.value.bias.add_(0.5)
    fast, layers, modules = _paths(model, input_ids=IDS, attention_mask=MASK)
    assert calls == ["encoder", "layer"] * 2
    assert not torch.equal(fast[0], before[0][0]) and not torch.equal(layers[0], before[1][0])
    for a, b, c in zip(fast, layers, modules):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_the_native_call_names_bad_operands():
    model = _bert(1)
    quantize_(model, W8A8Config())
    x = torch.randn(2, 5, 64, generator=GEN)
    with torch.no_grad():
        weights, eps, heads, scaling = int8_encoder.int8_encoder_weights(model.encoder.layer, x)
    op, amx, none = native_ops().int8_bert_encoder, int8_encoder.amx_int8_available(), torch.empty(0)
    with pytest.raises(RuntimeError, match="16 tensors per layer"):
        op(x, none, weights[:-1], eps, heads, scaling, amx)
    with pytest.raises(RuntimeError, match="2 values per layer"):
        op(x, none, weights, eps[:1], heads, scaling, amx)
    with pytest.raises(RuntimeError, match="heads do not divide"):
        op(x, none, weights, eps, 5, scaling, amx)
    with pytest.raises(RuntimeError, match="contiguous \\(B, S, H\\) float32"):
        op(x.double(), none, weights, eps, heads, scaling, amx)
    with pytest.raises(RuntimeError, match="col_scale"):  # a kernel's own check: the self-output weight in q/k/v's place
        op(x, none, [weights[3], *weights[1:]], eps, heads, scaling, amx)
    with pytest.raises(RuntimeError, match="mask"):
        op(x, torch.ones(2, 1, 1, 4, dtype=torch.bool), weights, eps, heads, scaling, amx)
