"""The AMX int4 kernel's codebook variant (ANT and other 4-bit tables): the reference's bf16 weights exactly,
float32 sums within their bound, and the dispatch that sends codebook layers to it."""
import pytest
import torch

from leanformer.quant import QuantizedLinear
from leanformer.quant.ant import ant_quantize
from leanformer.quant import kernels
from leanformer.quant.amx import amx_int8_status
from leanformer.quant.amx_w4 import (amx_w4_available, amx_w4_codebook_linear, codebook_tables, pack_amx_int4,
                                     w4_reference)

needs_amx = pytest.mark.skipif(not amx_w4_available(), reason=f"AMX: {amx_int8_status()}")

pytestmark = pytest.mark.usefixtures("kernel_policy_restored")


def _ant_module(k, n, gs, granularity, bits=4, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    # uniform, Gaussian and heavy-tailed rows, so that ANT picks int, flint and power-of-two per channel / group
    with torch.no_grad():
        w = lin.weight
        w[0::3] = torch.rand_like(w[0::3]) * 2 - 1
        w[1::3] = torch.randn_like(w[1::3])
        w[2::3] = torch.randn_like(w[2::3]) ** 5
    qw = ant_quantize(lin.weight, bits=bits, group_size=gs, granularity=granularity)
    return QuantizedLinear.from_float(lin, qw)


@pytest.mark.parametrize("shape", [(16,), (8,), (6, 16), (6, 1, 8), (6, 3, 16)])
def test_tables_give_each_column_and_group_its_bf16_row(shape):
    n, groups = 6, 3
    gen = torch.Generator().manual_seed(1)
    codebook = torch.randn(shape, generator=gen)
    if codebook.dim() > 1:  # repeated rows must share one table row
        codebook[1] = codebook[0]
    table, ids = codebook_tables(codebook, n, groups)
    assert table.shape[1] == 16 and table.dtype == torch.float32 and ids.shape == (groups, n)
    assert ids.dtype == torch.int32 and len(torch.unique(table, dim=0)) == len(table)
    c = shape[-1]
    full = codebook.reshape(n, -1, c).expand(n, groups, c) if codebook.dim() > 1 else codebook.expand(n, groups, c)
    for col in range(n):
        for g in range(groups):
            row = table[ids[g, col]]
            assert torch.equal(row[:c], full[col, g].to(torch.bfloat16).float())
            assert not row[c:].any()


def test_tables_reject_what_the_kernel_cannot_index():
    with pytest.raises(ValueError, match="C <= 16"):
        codebook_tables(torch.zeros(32), 4, 1)
    with pytest.raises(ValueError, match="groups"):
        codebook_tables(torch.zeros(4, 2, 16), 4, 3)


@needs_amx
@pytest.mark.parametrize("granularity, gs, bits", [
    ("tensor", 32, 4), ("tensor", None, 4), ("tensor", 64, 3), ("channel", 32, 4), ("channel", None, 4),
    ("channel", 64, 3), ("group", 32, 4), ("group", 64, 4), ("group", 64, 3)])
def test_unpacked_weights_are_the_references_bit_for_bit(granularity, gs, bits):
    k, n = 128, 48
    mod = _ant_module(k, n, gs, granularity, bits=bits)
    operands = kernels._build_amx_w4(mod)
    if granularity != "tensor":
        assert len(operands[1]) > 1, "the test weights should make ANT pick more than one type"
    eye = torch.eye(k, dtype=torch.bfloat16)  # one product per output: no sum to round
    got = amx_w4_codebook_linear(eye, *operands, gs or k)
    assert torch.equal(got, mod.dequantized_weight(torch.bfloat16).float().t())


@needs_amx
@pytest.mark.parametrize("m, k, n, gs", [(1, 64, 16, 32), (5, 384, 48, 64), (33, 384, 272, 64),
                                         (100, 1536, 384, 64), (576, 384, 1536, 64)])
@pytest.mark.parametrize("granularity", ["tensor", "group"])
def test_sums_are_within_the_float32_bound(m, k, n, gs, granularity):
    mod = _ant_module(k, n, gs, granularity, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    got = amx_w4_codebook_linear(x, *kernels._build_amx_w4(mod), gs, mod.bias)
    ref, bound = w4_reference(x, mod.dequantized_weight(torch.bfloat16), mod.bias)
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert bool(((got - ref).abs() <= bound).all())


@needs_amx
@pytest.mark.parametrize("m", [1, 33, 200])
def test_two_threads_within_the_bound(m):
    mod = _ant_module(384, 384, 64, "channel")
    x = torch.randn(m, 384).to(torch.bfloat16)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = amx_w4_codebook_linear(x, *kernels._build_amx_w4(mod), 64, mod.bias)
    finally:
        torch.set_num_threads(before)
    ref, bound = w4_reference(x, mod.dequantized_weight(torch.bfloat16), mod.bias)
    assert bool(((got - ref).abs() <= bound).all())


@needs_amx
@pytest.mark.parametrize("rows", [1, 8, 40])
def test_ant_layers_take_the_kernel_at_every_row_count(rows):
    mod = _ant_module(384, 96, 64, "channel")
    x = torch.randn(rows, 384)
    assert kernels.choose_kernel(mod, rows, x) == "amx_w4"
    with torch.no_grad():
        y = mod(x)
        mod.activation = "gelu"  # as fuse_feed_forward_ sets it: the kernel's epilogue applies it
        fused = mod(x)
    assert "amx_w4" in mod._cache
    ref, bound = w4_reference(x.to(torch.bfloat16), mod.dequantized_weight(torch.bfloat16), mod.bias)
    assert bool(((y - ref).abs() <= bound).all())
    direct = amx_w4_codebook_linear(x.to(torch.bfloat16), *kernels._build_amx_w4(mod), 64, mod.bias,
                                    activation="gelu")
    assert torch.equal(fused, direct) and not torch.equal(fused, y)


@needs_amx
def test_bad_operands_raise_instead_of_reading_past_the_table():
    mod = _ant_module(64, 16, 32, "channel")
    codes, table, ids, scale = kernels._build_amx_w4(mod)
    x = torch.randn(4, 64).to(torch.bfloat16)
    bad = ids.clone()
    bad[1, 3] = len(table)
    with pytest.raises(RuntimeError, match=r"ids: values in \[0, T\)"):
        amx_w4_codebook_linear(x, codes, table, bad, scale, 32)
    with pytest.raises(RuntimeError, match=r"ids: values in \[0, T\)"):
        amx_w4_codebook_linear(x, codes, table, ids - 1, scale, 32)
    with pytest.raises(RuntimeError, match="table"):
        amx_w4_codebook_linear(x, codes, table[:, :8].contiguous(), ids, scale, 32)
    with pytest.raises(RuntimeError, match="ids"):
        amx_w4_codebook_linear(x, codes, table, ids.long(), scale, 32)


def test_codebook_layers_off_the_layout_keep_the_dequant_path():
    mod = _ant_module(100, 48, None, "tensor")  # K % 32 != 0
    assert kernels.choose_kernel(mod, 40, torch.randn(40, 100)) == "dequant"
    eight = _ant_module(64, 16, 32, "tensor", bits=8)  # 256-entry tables: no nibbles to index
    assert kernels.choose_kernel(eight, 40, torch.randn(40, 64)) == "dequant"


def test_packed_codes_are_the_modules_indices():
    mod = _ant_module(64, 16, 32, "group")
    assert torch.equal(kernels._build_amx_w4(mod)[0], pack_amx_int4(mod.unpacked_codes()))


@needs_amx
@pytest.mark.parametrize("table_rows", [1, 2, 4, 5, 40])  # in registers up to 4 rows, gathered beyond
def test_every_table_size_decodes_bit_for_bit(table_rows):
    n, k, gs = 48, 128, 32
    gen = torch.Generator().manual_seed(table_rows)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    rows = torch.randn(table_rows, 16, generator=gen).to(torch.bfloat16)
    pick = torch.randint(0, table_rows, (n, k // gs), generator=gen)
    pick[0, 0], pick[-1, -1] = 0, table_rows - 1  # the first and last rows are both used
    scale = (torch.rand(n, k // gs, generator=gen) + 0.5).to(torch.bfloat16)
    want = (torch.gather(rows[pick], -1, q.view(n, -1, gs).long()) * scale.unsqueeze(-1)).view(n, k)  # bf16
    table, ids = codebook_tables(rows[pick], n, k // gs)
    assert len(table) == table_rows
    eye = torch.eye(k, dtype=torch.bfloat16)
    got = amx_w4_codebook_linear(eye, pack_amx_int4(q), table, ids, scale.float().t().contiguous(), gs)
    assert torch.equal(got, want.float().t())
