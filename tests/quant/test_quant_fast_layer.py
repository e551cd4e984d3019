"""FastBertLayer: the shortcut gives the stock layer's outputs bit for bit, really skips the wrapper modules, and
falls back to the stock forward wherever it does not apply; the swap is recorded in checkpoints."""
import copy
import pickle

import pytest
import torch

from leanformer.quant import W8A8Config, WeightOnlyConfig, load_quantized, quantize_, save_quantized, set_policy
from leanformer.quant.native import native_ops, native_status

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(native_ops() is None, reason=f"native kernels: {native_status()}")

from leanformer.quant import fast_layer  # noqa: E402  (imports transformers)
from leanformer.quant.fast_layer import FastBertLayer, use_fast_layers_  # noqa: E402

modeling_bert = pytest.importorskip("transformers.models.bert.modeling_bert")


def _bert(layers=2, **overrides):
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=layers, num_attention_heads=3,
                                  intermediate_size=80, max_position_embeddings=64, **overrides)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


GEN = torch.Generator().manual_seed(1)
IDS = torch.randint(0, 97, (5, 19), generator=GEN)
MASK = (torch.arange(19)[None, :] < torch.tensor([19, 3, 11, 1, 17])[:, None]).long()  # padded batch


@pytest.fixture
def policy():
    yield set_policy
    set_policy(fast_layers=True)


def _outputs(model, fast: bool, **inputs):
    set_policy(fast_layers=fast)
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state, out.pooler_output


@pytest.mark.parametrize("config", [W8A8Config(), WeightOnlyConfig(bits=4, group_size=16)], ids=["w8a8", "w4"])
@pytest.mark.parametrize("inputs", [dict(input_ids=IDS, attention_mask=MASK), dict(input_ids=IDS[:1, :7])],
                         ids=["padded_batch", "one_sentence"])
def test_the_shortcut_gives_the_stock_outputs_bit_for_bit(config, inputs, policy):
    model = _bert()
    report = quantize_(model, config)
    assert report.fast_layers == 2 and all(type(layer) is FastBertLayer for layer in model.encoder.layer)
    for fast, stock in zip(_outputs(model, True, **inputs), _outputs(model, False, **inputs)):
        assert torch.equal(fast, stock)


def _count_wrapper_calls(monkeypatch):
    calls = []
    real = modeling_bert.BertAttention.forward
    monkeypatch.setattr(modeling_bert.BertAttention, "forward",
                        lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    return calls


def test_the_shortcut_skips_the_attention_wrappers(monkeypatch, policy):
    model = _bert()
    quantize_(model, W8A8Config())
    calls = _count_wrapper_calls(monkeypatch)
    _outputs(model, True, input_ids=IDS)
    assert calls == []
    _outputs(model, False, input_ids=IDS)
    assert len(calls) == 2  # the policy switch restores the stock path


def test_hooks_and_requests_the_shortcut_would_skip_take_the_stock_forward(monkeypatch, policy):
    model = _bert()
    quantize_(model, W8A8Config())
    calls = _count_wrapper_calls(monkeypatch)
    seen = []
    handle = model.encoder.layer[1].attention.self.register_forward_hook(lambda *a: seen.append(1))
    _outputs(model, True, input_ids=IDS)
    assert seen == [1] and len(calls) == 1  # the hooked layer ran stock, the other one the shortcut
    handle.remove()
    # attention weights asked for: whatever route transformers takes to collect them (keyword or hooks), the
    # answer is the stock layer's (SDPA-family attention gives none here, with a warning)
    with torch.no_grad():
        fast = model(input_ids=IDS, output_attentions=True)
        set_policy(fast_layers=False)
        stock = model(input_ids=IDS, output_attentions=True)
        set_policy(fast_layers=True)
    assert torch.equal(fast.last_hidden_state, stock.last_hidden_state)
    assert len(fast.attentions) == len(stock.attentions)
    assert all(torch.equal(a, b) for a, b in zip(fast.attentions, stock.attentions))
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        calls.clear()
        _outputs(model, True, input_ids=IDS)
        assert len(calls) == 2
    finally:
        handle.remove()


def test_chunked_feed_forward_and_decoders_keep_the_stock_forward(monkeypatch, policy):
    chunked = _bert(chunk_size_feed_forward=4)
    quantize_(chunked, W8A8Config())
    calls = _count_wrapper_calls(monkeypatch)
    _outputs(chunked, True, input_ids=IDS[:, :16])  # transformers' chunking wants a multiple of the chunk size
    assert len(calls) == 2
    decoder = _bert(is_decoder=True)
    quantize_(decoder, W8A8Config())
    calls.clear()
    fast, _ = _outputs(decoder, True, input_ids=IDS)
    assert len(calls) == 2
    assert torch.equal(fast, _outputs(decoder, False, input_ids=IDS)[0])


def test_models_off_the_short_attention_keep_their_layers():
    model = _bert()
    quantize_(model, W8A8Config(short_attention=False))
    assert all(type(layer) is modeling_bert.BertLayer for layer in model.encoder.layer)
    assert use_fast_layers_(model) == []


def test_other_transformers_signatures_are_left_alone(monkeypatch):
    model = _bert()
    quantize_(model, W8A8Config(short_attention=True))  # swaps here
    assert fast_layer.fast_layers_supported()
    fresh = _bert()
    monkeypatch.setattr(fast_layer, "_LAYER_PARAMS", fast_layer._LAYER_PARAMS + ("output_attentions",))
    report = quantize_(fresh, W8A8Config())
    assert report.short_attention and report.fast_layers == 0
    assert all(type(layer) is modeling_bert.BertLayer for layer in fresh.encoder.layer)


def test_checkpoints_record_the_swap_and_copies_keep_it(tmp_path):
    model = _bert()
    quantize_(model, W8A8Config())
    save_quantized(model, tmp_path / "q")
    loaded = load_quantized(tmp_path / "q")
    assert all(type(layer) is FastBertLayer for layer in loaded.encoder.layer)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).last_hidden_state, model(input_ids=IDS).last_hidden_state)
    for clone in (copy.deepcopy(loaded), pickle.loads(pickle.dumps(loaded))):
        assert type(clone.encoder.layer[0]) is FastBertLayer
        with torch.no_grad():
            assert torch.equal(clone(input_ids=IDS).last_hidden_state, model(input_ids=IDS).last_hidden_state)
