"""The fused 8-bit embedding gather (csrc/embedding_rows.cpp) equals QuantizedEmbedding's eager lookup bit for bit."""
import pytest
import torch
import torch.nn as nn

from leanformer.quant import EmbeddingConfig, QuantizedEmbedding, quantize_


def _table(vocab, dim, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = nn.Sequential(nn.Embedding(vocab, dim))
    with torch.no_grad():  # rows of very different magnitudes, one all-zero row
        emb[0].weight.copy_(torch.randn(vocab, dim, generator=gen) * torch.logspace(-3, 2, vocab).unsqueeze(-1))
        emb[0].weight[3] = 0.0
    quantize_(emb, cfg)
    assert isinstance(emb[0], QuantizedEmbedding)
    return emb[0]


def _count_native_calls(monkeypatch, ops):
    calls = []
    real = ops.embedding_rows

    class Counting:
        def __getattr__(self, name):
            return (lambda *a: (calls.append(name), real(*a))[1]) if name == "embedding_rows" else getattr(ops, name)

    from leanformer.quant import modules

    monkeypatch.setattr(modules, "native_ops_for", lambda x: Counting())
    return calls


@pytest.mark.parametrize("cfg", [EmbeddingConfig(bits=8), EmbeddingConfig(bits=8, symmetric=False),
                                 EmbeddingConfig(bits=8, group_size=8), EmbeddingConfig(bits=6, group_size=20),
                                 EmbeddingConfig(bits=8, scale_dtype="float32")])
@pytest.mark.parametrize("ids_shape", [(2, 7), (13,), (0,), (1, 1, 5)])
def test_fused_gather_is_bit_identical_to_the_eager_lookup(ops, monkeypatch, cfg, ids_shape):
    emb = _table(37, 40, cfg)  # 40: not a multiple of 16 (vector tails)
    ids = torch.randint(0, 37, ids_shape, generator=torch.Generator().manual_seed(1))
    if ids.numel():
        ids.view(-1)[0] = 3  # the all-zero row
    calls = _count_native_calls(monkeypatch, ops)
    got = emb(ids)
    assert calls == ["embedding_rows"]
    want = emb.forward_reference(ids)
    assert got.shape == (*ids_shape, 40) and got.dtype == torch.float32
    assert torch.equal(got, want)


def test_out_dtype_applies_after_the_gather(ops):
    emb = _table(20, 32, EmbeddingConfig(bits=8))
    emb.out_dtype = torch.bfloat16
    ids = torch.tensor([[1, 2, 19]])
    assert emb(ids).dtype == torch.bfloat16 and torch.equal(emb(ids), emb.forward_reference(ids))


def test_out_of_range_ids_are_refused(ops):
    emb = _table(20, 32, EmbeddingConfig(bits=8))
    for bad in (20, -1):
        with pytest.raises(RuntimeError, match="out of range for 20 rows"):
            emb(torch.tensor([0, bad]))


def test_other_tables_and_inputs_take_the_eager_lookup(ops, monkeypatch):
    calls = _count_native_calls(monkeypatch, ops)
    four_bit = _table(20, 32, EmbeddingConfig(bits=4, group_size=16))
    ids = torch.tensor([0, 5, 19])
    assert torch.equal(four_bit(ids), four_bit.forward_reference(ids))
    eight_bit = _table(20, 32, EmbeddingConfig(bits=8))
    assert torch.equal(eight_bit(ids.int()), eight_bit.forward_reference(ids.int()))  # int32 ids
    assert calls == []


def test_the_float_tables_follow_a_reloaded_state_dict(ops):
    a, b = _table(20, 32, EmbeddingConfig(bits=8), seed=0), _table(20, 32, EmbeddingConfig(bits=8), seed=1)
    ids = torch.arange(20)
    a(ids)  # builds a's cached float tables
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(ids), b(ids))
