"""ANT: grids as the official code builds them, fast search == per-alpha loop, type choice, bad input."""
import pytest
import torch

from leanformer.quant.ant import ant_grid, ant_quantize, ant_search
from leanformer.reference.ant import ant_reference


def test_grids_4bit():
    assert ant_grid("int", 4).tolist() == list(range(-8, 8))
    mags = [0, 1, 2, 3, 4, 6, 8, 16]  # flint {0, 1/4, ..., 4} in integer form (x4)
    assert ant_grid("flint", 4).tolist() == sorted([-m for m in mags[1:]] + mags + [0])
    pot = [0] + [2 ** i for i in range(7)]
    assert ant_grid("pot", 4).tolist() == sorted([-p for p in pot[1:]] + pot + [0])
    assert torch.equal(ant_grid("float", 4), ant_grid("pot", 4))  # E3M0 == power of two at 4 bits
    for kind in ("int", "flint", "pot", "float"):
        for bits in (3, 5, 6):
            assert ant_grid(kind, bits).numel() == 2 ** bits


def _unpack(choice):
    return choice.chosen_names()


@pytest.mark.parametrize("shape,group,gran", [
    ((5, 13), None, "tensor"),      # prime K, per-channel alpha
    ((4, 24), 8, "tensor"),
    ((4, 24), 8, "channel"),
    ((4, 24), 8, "group"),
    ((3, 2, 3, 3), None, "tensor"),  # conv weight
    ((1, 9), None, "channel"),       # a single row
])
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_matches_reference(shape, group, gran, dist):
    w = torch.randn(shape) if dist == "normal" else torch.distributions.Laplace(0.0, 1.0).sample(shape)
    choice = ant_search(w, bits=4, group_size=group, granularity=gran)
    codes, scale, chosen = ant_reference(w, bits=4, group_size=group, granularity=gran)
    assert _unpack(choice) == [t for row in chosen for t in row]
    qw = ant_quantize(w, bits=4, group_size=group, granularity=gran, choice=choice)
    assert torch.equal(qw.codes, codes) and torch.equal(qw.scale, scale)
    # Mixed types use one codebook per row / group; dequantize must pick each unit's own table.
    n, gs = w.shape[0], w[0].numel() if group is None else group
    manual = torch.stack([torch.stack([
        ant_grid(chosen[r][g], 4).float()[codes.view(n, -1, gs)[r, g].long()] * scale[r, g].float()
        for g in range(len(chosen[r]))]) for r in range(n)])
    torch.testing.assert_close(qw.dequantize(), manual.view(w.shape), rtol=0, atol=0)


def test_search_mse_is_the_direct_mse():
    """The histogram MSE at the chosen alpha equals re-quantizing at that alpha (fp32 scale)."""
    w = torch.randn(6, 64)
    choice = ant_search(w, bits=4, group_size=32)
    qw = ant_quantize(w, bits=4, group_size=32, choice=choice, scale_dtype=torch.float32)
    direct = (qw.dequantize() - w).pow(2).view(6, 2, 32).mean(-1).double()
    t = int(choice.choice[0, 0])
    torch.testing.assert_close(direct, choice.mse[t], rtol=1e-4, atol=1e-9)  # fp32 dequant vs fp64 search
    ratio = choice.alpha[t] / w.view(6, 2, 32).abs().amax(-1).double()
    assert bool(((ratio >= 0.75 - 1e-12) & (ratio < 1.5)).all())


@pytest.mark.parametrize("dist,allowed", [
    ("uniform", {"int"}),
    ("laplace", {"flint", "pot"}),
    ("student2", {"flint", "pot"}),
    ("powers", {"pot"}),
])
def test_picks_the_right_type(dist, allowed):
    torch.manual_seed(3)
    shape = (64, 256)
    if dist == "uniform":
        w = torch.rand(shape) * 2 - 1
    elif dist == "laplace":
        w = torch.distributions.Laplace(0.0, 1.0).sample(shape)
    elif dist == "student2":
        w = torch.distributions.StudentT(2.0).sample(shape)
    else:  # magnitudes that are powers of two over 7 octaves: exactly a power-of-two grid
        w = torch.exp2(-torch.randint(0, 7, shape).float()) * torch.sign(torch.randn(shape))
    qw = ant_quantize(w, bits=4)
    assert qw.format in allowed, qw.format
    # and the chosen type really has the lowest error among the candidates
    choice = ant_search(w, bits=4)
    assert int(choice.choice[0, 0]) == int(torch.argmin(choice.mse.sum((1, 2))))


def test_dequantize_uses_codebook():
    w = torch.randn(8, 32)
    qw = ant_quantize(w, bits=4, group_size=16)
    assert qw.codebook is not None and qw.codes.dtype == torch.uint8 and qw.zero is None
    manual = qw.codebook[qw.codes.long()].view(8, 2, 16) * qw.scale.float().unsqueeze(-1)
    torch.testing.assert_close(qw.dequantize(), manual.view(8, 32), rtol=0, atol=0)
    sqnr = 10 * torch.log10(w.pow(2).sum() / (w - qw.dequantize()).pow(2).sum())
    assert sqnr > 15  # 4-bit on Gaussian data: ~19 dB


def test_8bit_uses_int_only():
    choice = ant_search(torch.distributions.Laplace(0.0, 1.0).sample((4, 64)), bits=8)
    assert choice.types == ("int",)


def test_bad_input():
    w = torch.randn(4, 12)
    with pytest.raises(ValueError, match="bits"):
        ant_quantize(w, bits=2)
    with pytest.raises(ValueError, match="bits"):
        ant_quantize(w, bits=9)
    with pytest.raises(ValueError, match="group_size"):
        ant_quantize(w, bits=4, group_size=5)
    with pytest.raises(ValueError, match="NaN or inf"):
        ant_quantize(torch.full((2, 4), float("nan")), bits=4)
    with pytest.raises(ValueError, match="granularity"):
        ant_quantize(w, bits=4, granularity="row")
    with pytest.raises(ValueError, match="group_size"):
        ant_quantize(w, bits=4, granularity="group")
    with pytest.raises(ValueError, match="types"):
        ant_quantize(w, bits=4, types=("int", "posit"))


@pytest.mark.parametrize("group,gran", [(None, "tensor"), (16, "channel"), (16, "group")])
def test_search_does_not_depend_on_the_chunking(group, gran):
    """Rows are searched a chunk at a time (memory); chunks of one row, of a prime count and of everything
    give the same alphas, errors and choice, bit for bit."""
    w = torch.randn(37, 48) ** 3
    w[::4] = torch.rand(10, 48) - 0.5  # uniform rows beside heavy-tailed ones: more than one type in play
    results = [ant_search(w, bits=4, group_size=group, granularity=gran, chunk_elems=elems)
               for elems in (1, 7 * 48 + 5, 1 << 20)]
    for other in results[1:]:
        assert torch.equal(other.alpha, results[0].alpha) and torch.equal(other.mse, results[0].mse)
        assert torch.equal(other.choice, results[0].choice)
    with pytest.raises(ValueError, match="chunk_elems"):
        ant_search(w, bits=4, chunk_elems=0)


def test_bf16_weight_equals_its_fp32_copy():
    weight = torch.randn(6, 32).to(torch.bfloat16)
    a = ant_quantize(weight, bits=4, group_size=16)
    b = ant_quantize(weight.float(), bits=4, group_size=16)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale) and a.format == b.format


needs_native = pytest.mark.skipif(__import__("leanformer.quant.native", fromlist=["x"]).native_ops() is None,
                                  reason="native kernels unavailable")


@needs_native
@pytest.mark.parametrize("kind", ["int", "flint", "pot", "float"])
@pytest.mark.parametrize("bits, gs", [(3, 7), (4, 64), (4, 1), (8, 13)])
def test_native_event_pass_is_the_eager_one_bit_for_bit(kind, bits, gs):
    from leanformer.quant import ant
    from leanformer.quant.native import native_ops

    gen = torch.Generator().manual_seed(bits * 100 + gs)
    w = torch.randn(30, gs, generator=gen) ** 3
    w[4] = 0  # an all-zero row
    w[5, 0] = -w[5].abs().max() * 2  # a row whose absmax is negative
    rows, grid = ant._Rows(w), ant.ant_grid(kind, bits)
    r = (float(grid.max()) * rows.ratio).float()
    sides = ant._side_tables(grid)
    (t_pos, v_pos), (t_neg, v_neg) = sides
    lo, hi = ant.SEARCH
    eager = ant._alpha_events(r, rows.u, rows.neg, sides, rows.rows, gs, lo, hi)
    native = native_ops().ant_alpha_events(r, rows.u, rows.neg, t_pos, v_pos, t_neg, v_neg, gs, lo, hi)
    assert eager[1].abs().sum() > 0 or kind == "int" and bits == 8  # thresholds are really crossed
    for a, b in zip(eager, native):
        assert a.dtype == b.dtype and torch.equal(a, b)


@needs_native
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
def test_search_and_codes_do_not_depend_on_the_native_ops(gran, kernel_policy_restored, monkeypatch):
    from leanformer.quant import ant, set_policy

    eager_calls = []
    real = ant._alpha_events
    monkeypatch.setattr(ant, "_alpha_events", lambda *a: eager_calls.append(1) or real(*a))
    w = torch.randn(96, 128)
    w[::3] = torch.rand(32, 128) - 0.5  # uniform rows next to Gaussian and heavy-tailed ones: mixed types
    w[1::3] **= 3
    fast = ant_quantize(w, bits=4, group_size=32, granularity=gran)
    assert not eager_calls
    set_policy(native=False)
    slow = ant_quantize(w, bits=4, group_size=32, granularity=gran)
    assert eager_calls
    assert torch.equal(fast.codes, slow.codes) and torch.equal(fast.scale, slow.scale)
    assert torch.equal(fast.codebook, slow.codebook)
    if gran != "tensor":
        assert fast.codebook.dim() > 1  # the mixed-type branch ran
