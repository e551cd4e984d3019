"""save_quantized / load_quantized: exact round-trip in a fresh process, same model class, and refusals."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from leanformer.quant import (CheckpointError, EmbeddingConfig, W4A8Config, W8A8Config, WeightOnlyConfig,
                              load_quantized, quantize_, save_quantized)

transformers = pytest.importorskip("transformers")


def _tiny_bert(w4a8: bool = False):
    """Weight-only int4 attention and W8A8 feed-forward layers (or W4A8 everywhere), int4 embeddings."""
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=40)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    if w4a8:
        quantize_(model, W4A8Config(act_weighting=False))
    else:
        quantize_(model, WeightOnlyConfig(bits=4, group_size=32), filter_fn=lambda m, n: "intermediate" not in n)
        quantize_(model, W8A8Config(), filter_fn=lambda m, n: "intermediate" in n)
    quantize_(model, EmbeddingConfig(bits=4, group_size=32, symmetric=False))
    return model


IDS = [[5, 17, 3, 99, 42, 0, 7], [1, 2, 3, 4, 5, 6, 100]]


@pytest.mark.parametrize("w4a8", [False, True], ids=["w4+w8a8", "w4a8"])
def test_roundtrip_in_a_new_process_is_exact(tmp_path, w4a8):
    torch.set_num_threads(1)
    model = _tiny_bert(w4a8)
    with torch.no_grad():
        small = model(input_ids=torch.tensor(IDS[:1][:1])[:, :2]).last_hidden_state  # packed-kernel rows
        big = model(input_ids=torch.tensor(IDS * 12)).last_hidden_state  # dequant / W8A8 rows
    save_quantized(model, tmp_path / "ck")
    torch.save({"small": small, "big": big}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from leanformer.quant import load_quantized
        model = load_quantized({str(tmp_path / 'ck')!r})
        exp = torch.load({str(tmp_path / 'expected.pt')!r})
        assert type(model).__name__ == "BertModel", type(model)
        with torch.no_grad():
            small = model(input_ids=torch.tensor({IDS!r}[:1])[:, :2]).last_hidden_state
            big = model(input_ids=torch.tensor({IDS!r} * 12)).last_hidden_state
        assert torch.equal(small, exp["small"]), (small - exp["small"]).abs().max()
        assert torch.equal(big, exp["big"]), (big - exp["big"]).abs().max()
        print("EXACT")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "EXACT" in out.stdout, out.stderr[-2000:]


def test_saved_files_are_plain_and_small(tmp_path):
    from safetensors.torch import load_file

    model = _tiny_bert()
    save_quantized(model, tmp_path)
    meta = json.loads((tmp_path / "leanformer_quant.json").read_text())
    assert meta["format"] == "leanformer.quant" and meta["version"] == 1
    assert meta["model"] == {"class": "BertModel", "module": meta["model"]["module"], "kind": "transformers"}
    tensors = load_file(str(tmp_path / "model.safetensors"))
    qw = tensors["encoder.layer.0.attention.self.query.qweight"]
    assert qw.dtype == torch.uint8 and tuple(qw.shape) == (64, 32)  # two int4 codes per byte
    assert tensors["encoder.layer.0.intermediate.dense.qweight"].dtype == torch.int8
    assert not any(k.endswith(".weight") and "LayerNorm" not in k for k in tensors)  # no float copies kept


def test_plain_torch_model_needs_a_template(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    quantize_(model, WeightOnlyConfig(bits=4, group_size=16))
    save_quantized(model, tmp_path)
    with pytest.raises(CheckpointError, match="pass model="):
        load_quantized(tmp_path)
    loaded = load_quantized(tmp_path, model=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)))
    x = torch.randn(3, 16)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="does not match"):
        load_quantized(tmp_path, model=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 9)))
    with pytest.raises(CheckpointError, match="holds a Sequential"):
        load_quantized(tmp_path, model=nn.ModuleList([nn.Linear(16, 32)]))


def test_refuses_foreign_non_empty_directory(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32))
    quantize_(model, WeightOnlyConfig(bits=8, group_size=None))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        save_quantized(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # untouched
    save_quantized(model, tmp_path / "ck")
    save_quantized(model, tmp_path / "ck")  # replacing a leanformer checkpoint is allowed
    save_quantized(model, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no quantized modules"):
        save_quantized(nn.Sequential(nn.Linear(2, 2)), tmp_path / "empty")


def test_not_a_checkpoint_and_corruption(tmp_path):
    with pytest.raises(CheckpointError, match="not a leanformer"):
        load_quantized(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_quantized(tmp_path / "missing")
    model = _tiny_bert()
    ck = save_quantized(model, tmp_path / "ck")
    blob = bytearray((ck / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside tensor data
    (ck / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_quantized(ck)
    (ck / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_quantized(ck, verify=False)
    meta = ck / "leanformer_quant.json"
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="not JSON"):
        load_quantized(ck)
    meta.write_text(json.dumps({"format": "leanformer.quant", "version": 99}))
    with pytest.raises(CheckpointError, match="newer"):
        load_quantized(ck)


def test_bf16_activations_roundtrip(tmp_path):
    from leanformer.quant import set_activation_dtype_

    model = _tiny_bert()
    with pytest.raises(ValueError, match="activation dtype"):
        set_activation_dtype_(model, torch.int8)
    set_activation_dtype_(model, torch.bfloat16)
    q = model.encoder.layer[0].attention.self.query
    assert q.scale.dtype == torch.float16  # quantized storage untouched (model.to(bf16) would cast it)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        out = model(input_ids=ids).last_hidden_state
    assert out.dtype == torch.bfloat16
    save_quantized(model, tmp_path)
    loaded = load_quantized(tmp_path)
    assert loaded.embeddings.LayerNorm.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, out)
