"""Short-sequence attention (quant/attention.py, csrc/short_attention.cpp): the kernel against a float64
reference and torch's SDPA on awkward shapes, masks and layouts; its edge rows; the switch of a transformers
model, its fallbacks, its record in quantize_ and in checkpoints."""
import pytest
import torch
import torch.nn.functional as F

from leanformer.quant import W8A8Config, WeightOnlyConfig, get_policy, load_quantized, quantize_, save_quantized
from leanformer.quant import attention as attn
from leanformer.quant.attention import (ABS_BOUND, ATTENTION_NAME, reference_attention, short_attention,
                                        use_short_attention_)
from leanformer.quant.native import native_ops, native_status

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(native_ops() is None, reason=f"native kernels: {native_status()}")


def _qkv(b, h, sq, sk, d, seed=0, strided=True):
    """q, k, v as the model hands them over: views of (B, S, H * D) projections, transposed to (B, H, S, D)."""
    gen = torch.Generator().manual_seed(seed)
    if not strided:
        return (torch.randn(b, h, sq, d, generator=gen), torch.randn(b, h, sk, d, generator=gen),
                torch.randn(b, h, sk, d, generator=gen))
    q = torch.randn(b, sq, h * d, generator=gen).view(b, sq, h, d).transpose(1, 2)
    kv = torch.randn(b, sk, 2 * h * d, generator=gen)
    k = kv[..., : h * d].view(b, sk, h, d).transpose(1, 2)
    v = kv[..., h * d:].view(b, sk, h, d).transpose(1, 2)
    return q, k, v


def _padding(b, sq, sk, seed=0):
    """(B, 1, Sq, Sk) bool: True attends, each batch row with its own number of valid keys (at least one)."""
    lens = torch.randint(1, sk + 1, (b,), generator=torch.Generator().manual_seed(seed))
    keep = torch.arange(sk)[None, :] < lens[:, None]  # (B, Sk)
    return keep[:, None, None, :].expand(b, 1, sq, sk).contiguous()


SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 24), (3, 2, 17, 33, 40), (2, 12, 18, 18, 32), (1, 2, 9, 200, 16),
          (2, 1, 31, 16, 64), (1, 1, 3, 17, 8)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "keys_only", "per_row"])
@pytest.mark.parametrize("strided", [True, False])
def test_kernel_matches_the_float64_reference(shape, mask_kind, strided):
    b, h, sq, sk, d = shape
    q, k, v = _qkv(b, h, sq, sk, d, strided=strided)
    mask = None
    if mask_kind == "bool":
        mask = _padding(b, sq, sk)
    elif mask_kind == "float":  # an additive mask with -inf, large negative and ordinary values, per head
        gen = torch.Generator().manual_seed(3)
        mask = torch.randn(1, h, sq, sk, generator=gen)
        mask[..., 0] = float("-inf") if sk > 1 else 0.0
        mask[..., -1] = -1e4 if sk > 2 else 0.0
    elif mask_kind == "keys_only":  # (B, 1, 1, Sk), broadcast over heads and queries
        mask = _padding(b, 1, sk)
    elif mask_kind == "per_row":  # every query row its own random set of keys, the last ones often masked
        gen = torch.Generator().manual_seed(4)
        mask = torch.rand(b, h, sq, sk, generator=gen) < 0.5
        mask[..., 0] = True
        mask[..., sk // 2:] &= torch.rand(b, h, sq, 1, generator=gen) < 0.3
    got = short_attention(q, k, v, mask, scale=0.3)
    want = reference_attention(q, k, v, mask, scale=0.3)
    assert got.shape == (b, sq, h, d) and got.is_contiguous()
    assert (got - want).abs().max() <= ABS_BOUND
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert (got - sdpa).abs().max() <= 2 * ABS_BOUND


def test_a_row_with_every_key_masked_gives_zeros_as_sdpa_does():
    q, k, v = _qkv(2, 2, 4, 6, 16)
    mask = torch.ones(2, 1, 4, 6, dtype=torch.bool)
    mask[1, 0, 2] = False  # batch 1, query 2: no key
    got = short_attention(q, k, v, mask)
    assert torch.equal(got[1, 2], torch.zeros(2, 16))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    assert torch.equal(sdpa[1, 2], got[1, 2])
    assert (got - reference_attention(q, k, v, mask)).abs().max() <= ABS_BOUND


def test_a_nan_reaches_only_the_rows_that_read_it():
    q, k, v = _qkv(2, 2, 5, 5, 16, strided=False)
    q[0, 1, 3, 7] = float("nan")
    got = short_attention(q, k, v)
    assert got[0, 3, 1].isnan().all()
    rest = torch.ones_like(got, dtype=torch.bool)
    rest[0, 3, 1] = False
    assert not got[rest].isnan().any()


def test_keys_after_the_last_attended_one_are_not_read():
    q, k, v = _qkv(2, 2, 5, 20, 16, strided=False)
    mask = torch.ones(2, 1, 5, 20, dtype=torch.bool)
    mask[..., 7:] = False
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, 7:], v_bad[:, :, 7:] = float("nan"), float("nan")  # never read: exactly the same output
    assert torch.equal(short_attention(q, k, v, mask), short_attention(q, k_bad, v_bad, mask))


def test_masked_keys_get_exactly_zero_weight():
    q, k, v = _qkv(1, 1, 3, 5, 16, strided=False)
    mask = torch.tensor([True, True, False, True, False])[None, None, None, :]
    v_bad = v.clone()
    v_bad[0, 0, 2] = 1e30  # a masked key's value: weight 0 keeps it out entirely
    assert torch.equal(short_attention(q, k, v, mask), short_attention(q, k, v_bad, mask))


@pytest.mark.parametrize("bad", ["dtype", "device_dims", "heads", "mask_shape", "mask_dtype"])
def test_bad_input_is_named(bad):
    q, k, v = _qkv(2, 2, 4, 6, 16)
    mask = None
    if bad == "dtype":
        q = q.double()
    elif bad == "device_dims":
        q = q[0]
    elif bad == "heads":
        k, v = k[:, :1], v[:, :1]
    elif bad == "mask_shape":
        mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    elif bad == "mask_dtype":
        mask = torch.ones(2, 1, 4, 6, dtype=torch.int64)
    with pytest.raises((ValueError, RuntimeError), match="q|k|mask"):
        short_attention(q, k, v, mask)


def _bert(layers=2, **kw):
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64, **kw)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


IDS = torch.randint(0, 97, (5, 21), generator=torch.Generator().manual_seed(1))
MASK = (torch.arange(21)[None, :] < torch.tensor([21, 3, 17, 9, 1])[:, None]).long()


def _count_kernel_calls(monkeypatch):
    calls = []
    real = attn.short_attention
    monkeypatch.setattr(attn, "short_attention", lambda *a, **kw: (calls.append(a[0].shape), real(*a, **kw))[1])
    return calls


def test_a_switched_bert_matches_sdpa_with_padding(monkeypatch):
    stock, lean = _bert(), _bert()
    assert use_short_attention_(lean) and lean.config._attn_implementation == ATTENTION_NAME
    assert stock.config._attn_implementation == "sdpa"  # other models in the process are untouched
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        want = stock(input_ids=IDS, attention_mask=MASK).last_hidden_state
        got = lean(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert len(calls) == 2  # the kernel ran in both layers (no silent fallback)
    assert (got - want).abs().max() <= 1e-5
    with torch.no_grad():  # no padding: transformers passes no mask
        assert (lean(input_ids=IDS).last_hidden_state - stock(input_ids=IDS).last_hidden_state).abs().max() <= 1e-5


def test_calls_it_does_not_cover_run_sdpa_unchanged(monkeypatch):
    stock, lean = _bert(), _bert()
    use_short_attention_(lean)
    calls = _count_kernel_calls(monkeypatch)
    # with gradients (training)
    a = stock(input_ids=IDS, attention_mask=MASK).last_hidden_state
    b = lean(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.equal(a, b) and not calls
    b.sum().backward()
    # bf16 activations
    with torch.no_grad():
        a = stock.to(torch.bfloat16)(input_ids=IDS, attention_mask=MASK).last_hidden_state
        b = lean.to(torch.bfloat16)(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.equal(a, b) and not calls


def test_models_off_sdpa_are_left_alone():
    eager = _bert()
    eager.set_attn_implementation("eager")
    assert not use_short_attention_(eager) and eager.config._attn_implementation == "eager"
    assert not use_short_attention_(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_quantize_switches_it_on_by_default_and_reports_it():
    model, plain = _bert(), _bert()
    report = quantize_(model, W8A8Config())
    assert report.short_attention and model.config._attn_implementation == ATTENTION_NAME
    assert "short-sequence attention" in report.summary()
    report = quantize_(plain, WeightOnlyConfig(short_attention=False))
    assert not report.short_attention and plain.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="short_attention"):
        W8A8Config(short_attention="yes")


def test_checkpoints_restore_it(tmp_path):
    model = _bert()
    quantize_(model, W8A8Config())
    save_quantized(model, tmp_path / "q")
    loaded = load_quantized(tmp_path / "q")
    assert loaded.config._attn_implementation == ATTENTION_NAME
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS, attention_mask=MASK).last_hidden_state,
                           model(input_ids=IDS, attention_mask=MASK).last_hidden_state)
    stock = _bert()
    quantize_(stock, W8A8Config(short_attention=False))
    save_quantized(stock, tmp_path / "s")
    assert load_quantized(tmp_path / "s").config._attn_implementation == "sdpa"


def test_a_pickled_model_runs_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    model = _bert()
    quantize_(model, W8A8Config())
    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    torch.save({"model": model, "ids": IDS, "mask": MASK, "want": want}, tmp_path / "model.pt")
    code = (f"import torch; d = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)\n"
            "with torch.no_grad():\n"
            "    got = d['model'](input_ids=d['ids'], attention_mask=d['mask']).last_hidden_state\n"
            f"assert d['model'].config._attn_implementation == {ATTENTION_NAME!r}\n"
            "assert torch.equal(got, d['want']), (got - d['want']).abs().max()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.long, torch.bool, torch.int32])
def test_the_padding_mask_is_sdpa_masks_broadcast(dtype):
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, sdpa_mask

    gen = torch.Generator().manual_seed(4)
    for b, kv in ((5, 21), (1, 7), (3, 1)):
        lengths = torch.randint(0, kv + 1, (b,), generator=gen)
        lengths[0] = kv - 1 if kv > 1 else 0  # at least one padded key
        mask = (torch.arange(kv)[None, :] < lengths[:, None]).to(dtype)
        args = dict(batch_size=b, q_length=kv, kv_length=kv, mask_function=bidirectional_mask_function,
                    attention_mask=mask, allow_is_causal_skip=False, allow_is_bidirectional_skip=True)
        got, want = attn.padding_mask(**args), sdpa_mask(**args)
        assert got.shape == (b, 1, 1, kv) and torch.equal(got.expand(want.shape), want)
        for other in (dict(args, mask_function=causal_mask_function), dict(args, attention_mask=torch.ones_like(mask)),
                      dict(args, local_size=4), dict(args, attention_mask=None)):
            a, e = attn.padding_mask(**other), sdpa_mask(**other)  # anything else is sdpa_mask's own answer
            assert (a is None and e is None) or torch.equal(a, e)


def test_the_padding_mask_gives_the_expanded_masks_outputs(monkeypatch):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    model = _bert()
    quantize_(model, W8A8Config())
    assert model.config._attn_implementation == ATTENTION_NAME
    monkeypatch.setattr(get_policy(), "int8_encoder", False)  # (its C++ calls the kernel without the Python wrapper)
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        got = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, ATTENTION_NAME, sdpa_mask)
        want = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert [c for c in calls] and torch.equal(got, want)
