"""Round-to-nearest quantizer: error bounds, clip-search and refinement monotonicity, bad input."""
import pytest
import torch

from leanformer.quant.rtn import grouped, quantize_rtn


def _group_err(w, qw):
    gs = qw.group_size
    return (grouped(w, gs) - grouped(qw.dequantize(), gs)).pow(2).sum(-1)  # (N, G)


def _sqnr_db(w, qw):
    return float(10 * torch.log10(w.pow(2).sum() / (w - qw.dequantize()).pow(2).sum()))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 8])
def test_plain_rtn_error_is_half_a_step(bits, symmetric, group_size):
    w = torch.randn(7, 24) * 0.05
    qw = quantize_rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
    step = qw.scale.float().repeat_interleave(24 // qw.scale.shape[1], dim=1)  # (N, K)
    # half a step, plus slack for the fp16 rounding of scale and zero (<= 2e-2 of a step, see rtn.py)
    assert ((w - qw.dequantize()).abs() <= 0.52 * step).all()
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert int(qw.codes.min()) >= lo and int(qw.codes.max()) <= hi
    assert qw.codes.dtype == (torch.int8 if symmetric else torch.uint8)
    assert qw.scale.dtype == torch.float16 and (qw.zero is None) == symmetric


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_and_refine_never_increase_group_error(symmetric):
    w = torch.randn(16, 64) * 0.02
    w[0, 3] = 0.4  # an outlier: the clip search should help its group
    plain = quantize_rtn(w, bits=4, group_size=32, symmetric=symmetric)
    searched = quantize_rtn(w, bits=4, group_size=32, symmetric=symmetric, clip_search=True)
    refined = quantize_rtn(w, bits=4, group_size=32, symmetric=symmetric, clip_search=True, refine_steps=3)
    e0, e1, e2 = _group_err(w, plain), _group_err(w, searched), _group_err(w, refined)
    assert (e1 <= e0 * (1 + 1e-6)).all() and (e2 <= e1 * (1 + 1e-6)).all()
    assert e2.sum() < e0.sum()


def test_sqnr_levels():
    w = torch.randn(64, 256)
    assert _sqnr_db(w, quantize_rtn(w, bits=8)) > 38  # int8 per channel on Gaussian rows: ~40 dB
    g32 = quantize_rtn(w, bits=4, group_size=32, symmetric=False, clip_search=True, refine_steps=3)
    assert _sqnr_db(w, g32) > 19  # ~6 dB per bit minus the range loss: ~20 dB


def test_conv_weight_keeps_shape_and_groups_over_flattened_axis():
    w = torch.randn(6, 3, 3, 3)
    qw = quantize_rtn(w, bits=4, group_size=9, symmetric=False)
    assert qw.codes.shape == w.shape and qw.scale.shape == (6, 3)
    assert qw.dequantize().shape == w.shape


def test_constant_and_zero_groups():
    w = torch.zeros(2, 8)
    w[1] = 0.3
    for sym in (True, False):
        qw = quantize_rtn(w, bits=4, symmetric=sym, clip_search=True, refine_steps=2)
        torch.testing.assert_close(qw.dequantize(), w, atol=2e-3, rtol=0)


@pytest.mark.parametrize("weight, kwargs, err, match", [
    (torch.tensor([[1.0, float("nan")]]), dict(bits=4), ValueError, "NaN or inf"),
    (torch.tensor([[1.0, float("inf")]]), dict(bits=8), ValueError, "NaN or inf"),
    (torch.randn(4, 10), dict(bits=4, group_size=4), ValueError, "does not divide"),
    (torch.randn(4, 8), dict(bits=1), ValueError, "bits"),
    (torch.randn(4, 8), dict(bits=16), ValueError, "bits"),
    (torch.ones(4, 8, dtype=torch.int32), dict(bits=4), TypeError, "floating-point"),
    (torch.randn(8), dict(bits=4), ValueError, "2-D"),
    (torch.full((2, 4), 1e9), dict(bits=4), ValueError, "too large"),
])
def test_bad_input(weight, kwargs, err, match):
    with pytest.raises(err, match=match):
        quantize_rtn(weight, **kwargs)


def test_asymmetric_zero_is_exact_and_unbiased_with_outliers():
    """An integer zero point keeps w = 0 exact, so near-zero weights of a row with outliers are not all
    shifted the same way (a fractional zero gave MiniLM int4 per-channel cosine 0.30; see rtn._affine)."""
    w = torch.randn(8, 256) * 0.01
    w[:, 0] = 1.0  # one large outlier per row: a huge step, the bulk of the row inside one bin
    w[:, 1:9] = 0.0
    qw = quantize_rtn(w, bits=4, symmetric=False, clip_search=True)
    assert torch.equal(qw.zero, torch.round(qw.zero))
    deq = qw.dequantize()
    assert (deq[:, 1:9] == 0).all()
    bias = (deq - w)[:, 9:].mean(1).abs()  # the row offset over the near-zero bulk
    assert (bias < 0.1 * qw.scale.float().squeeze(1)).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_row_blocks_give_the_same_result_as_one_sweep(monkeypatch, symmetric):
    import leanformer.quant.rtn as rtn

    w = torch.randn(37, 96) * torch.logspace(-2, 1, 37).unsqueeze(-1)
    kw = dict(bits=4, group_size=32, symmetric=symmetric, clip_search=True, refine_steps=2,
              importance=torch.rand(96))
    monkeypatch.setattr(rtn, "_BLOCK_ELEMENTS", 10 ** 9)  # one block
    whole = quantize_rtn(w, **kw)
    monkeypatch.setattr(rtn, "_BLOCK_ELEMENTS", 5 * 96)  # 5-row blocks and a 2-row remainder
    blocked = quantize_rtn(w, **kw)
    assert torch.equal(whole.codes, blocked.codes) and torch.equal(whole.scale, blocked.scale)
    assert (whole.zero is None and blocked.zero is None) or torch.equal(whole.zero, blocked.zero)
