"""BERT embeddings with their 8-bit lookups and sums in one native pass (fast_embeddings.py, embedding_sum in
csrc/embedding_rows.cpp): bit-identical to the stock forward, taken where it applies, left for the stock forward
elsewhere."""
import pytest
import torch

from leanformer.quant import EmbeddingConfig, W8A8Config, quantize_, set_policy
from leanformer.quant.native import native_ops, native_status

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.skipif(native_ops() is None, reason=f"native kernels: {native_status()}"),
              pytest.mark.usefixtures("kernel_policy_restored")]

from leanformer.quant.fast_embeddings import FastBertEmbeddings  # noqa: E402  (imports transformers)

GEN = torch.Generator().manual_seed(5)
IDS = torch.randint(0, 101, (5, 19), generator=GEN)
TYPES = torch.randint(0, 2, (5, 19), generator=GEN)


def _bert(embedding_config=EmbeddingConfig(bits=8)):
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=192, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    quantize_(model, W8A8Config())
    if embedding_config is not None:
        quantize_(model, embedding_config)
    return model


@pytest.fixture
def sums(monkeypatch):
    """The number of native one-pass sums run."""
    calls = []
    ops = native_ops()
    real = ops.embedding_sum
    monkeypatch.setattr(ops, "embedding_sum", lambda *a: (calls.append(1), real(*a))[1])
    return calls


def _both(emb, **inputs):
    with torch.no_grad():
        fast = emb(**inputs)
        set_policy(fast_layers=False)
        stock = emb(**inputs)
        set_policy(fast_layers=True)
    return fast, stock


@pytest.mark.parametrize("config", [EmbeddingConfig(bits=8), EmbeddingConfig(bits=8, group_size=16, symmetric=False)],
                         ids=["per_row", "asymmetric_g16"])
@pytest.mark.parametrize("inputs", [dict(input_ids=IDS), dict(input_ids=IDS, token_type_ids=TYPES),
                                    dict(input_ids=IDS[:2, 3:], position_ids=torch.arange(7, 23)[None]),
                                    dict(input_ids=IDS[:1, :1], cache_length=4),
                                    dict(input_ids=IDS, position_ids=torch.randint(0, 64, (5, 19), generator=GEN))],
                         ids=["defaults", "token_types", "positions", "one_token_after_cache", "per_row_positions"])
def test_the_one_pass_sum_gives_the_stock_embeddings_bit_for_bit(config, inputs, sums):
    model = _bert(config)
    assert type(model.embeddings) is FastBertEmbeddings
    fast, stock = _both(model.embeddings, **inputs)
    assert sums == [1] and fast.shape == (*inputs["input_ids"].shape, 64)
    assert torch.equal(fast, stock)


def test_the_whole_model_takes_it_and_keeps_its_outputs(sums):
    model = _bert()
    mask = (torch.arange(19)[None, :] < torch.tensor([19, 3, 11, 1, 17])[:, None]).long()
    with torch.no_grad():
        fast = model(input_ids=IDS, attention_mask=mask, token_type_ids=TYPES)
        set_policy(fast_layers=False)
        stock = model(input_ids=IDS, attention_mask=mask, token_type_ids=TYPES)
    assert sums == [1]
    assert torch.equal(fast.last_hidden_state, stock.last_hidden_state)
    assert torch.equal(fast.pooler_output, stock.pooler_output)


@pytest.mark.parametrize("case", ["float_tables", "4_bit_tables", "inputs_embeds", "training", "hooked_table",
                                  "int32_positions"])
def test_anything_else_runs_the_stock_forward(case, sums):
    model = _bert(EmbeddingConfig(bits=4, group_size=16) if case == "4_bit_tables" else
                  None if case == "float_tables" else EmbeddingConfig(bits=8))
    emb, inputs = model.embeddings, dict(input_ids=IDS)
    seen = []
    if case == "inputs_embeds":
        inputs = dict(inputs_embeds=torch.randn(5, 19, 64, generator=GEN))
    elif case == "training":
        emb.train()
    elif case == "hooked_table":
        emb.token_type_embeddings.register_forward_hook(lambda *a: seen.append(1))
    elif case == "int32_positions":
        inputs = dict(input_ids=IDS, position_ids=torch.arange(19, dtype=torch.int32)[None])
    with torch.no_grad():
        torch.manual_seed(1)
        out = emb(**inputs)
        set_policy(fast_layers=False)
        torch.manual_seed(1)
        stock = emb(**inputs)
    assert sums == [] and torch.equal(out, stock)
    assert seen == ([1, 1] if case == "hooked_table" else [])


def test_an_id_out_of_range_is_named(sums):
    model = _bert()
    with pytest.raises(RuntimeError, match="id 101 is out of range for 101 rows"):
        model.embeddings(input_ids=torch.tensor([[3, 101]]))


def test_the_native_sum_names_bad_operands():
    ops = native_ops()
    codes = torch.randint(-127, 128, (10, 32), dtype=torch.int8, generator=GEN)
    scale, ids = torch.rand(10, 1, generator=GEN), torch.tensor([1, 2, 3])
    none = torch.empty(0)
    with pytest.raises(RuntimeError, match="one codes, scale, zero and ids tensor per table"):
        ops.embedding_sum([codes, codes], [scale], [none, none], [ids, ids])
    with pytest.raises(RuntimeError, match="must agree"):
        ops.embedding_sum([codes, codes], [scale, scale], [none, none], [ids, ids[:2]])
    with pytest.raises(RuntimeError, match="ids: contiguous \\(T,\\) int64"):
        ops.embedding_sum([codes], [scale], [none], [ids.int()])
    with pytest.raises(RuntimeError, match="scale: contiguous \\(V, G\\) float32"):
        ops.embedding_sum([codes], [scale.double()], [none], [ids])
