"""StepMemoryReport JSON/table/plot, the default loss, and clear errors on bad input."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from leanformer.profile import StepMemoryReport, default_loss, measure_step, plot_reports
from leanformer.profile.compare import compare_table
from leanformer.profile.report import layer_of


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@pytest.fixture(scope="module")
def report():
    model = _Stack()
    return measure_step(model, torch.randn(4, 8), optimizer=torch.optim.AdamW(model.parameters()))


def test_json_round_trip(report):
    report.meta = {"batch": 4, "note": "x"}
    text = report.to_json()
    data = json.loads(text)
    for key in ("params_bytes", "grads_bytes", "optimizer_state_bytes", "saved_activation_bytes", "by_module",
                "by_kind"):
        assert key in data
    assert data["by_layer"] == report.by_layer()
    assert StepMemoryReport.from_json(text) == report


def test_from_json_rejects_unknown_and_missing_fields(report):
    data = report.to_dict()
    with pytest.raises(ValueError, match="unknown StepMemoryReport fields"):
        StepMemoryReport.from_dict({**data, "bogus": 1})
    del data["by_kind"]
    with pytest.raises(ValueError, match="lacks fields"):
        StepMemoryReport.from_dict(data)


def test_by_layer_groups_numbered_blocks(report):
    assert list(report.repeated_layers()) == ["layers.0", "layers.1", "layers.2"]
    # layer 0 saves x (Linear) and tanh's output; later Linears re-save the previous tanh output (counted once,
    # under the tanh that saved it first), so later layers hold only their own tanh output; the head adds nothing
    row = 4 * 8 * 4
    assert report.repeated_layers() == {"layers.0": 2 * row, "layers.1": row, "layers.2": row}
    assert "head" not in report.by_module
    assert sum(report.by_layer().values()) == report.saved_activation_bytes
    assert layer_of("bert.encoder.layer.11.attention.self") == "bert.encoder.layer.11"
    assert layer_of("0.fc") == "0" and layer_of("lm_head") == "lm_head" and layer_of("") == ""


def test_table_and_compare_mention_every_part(report):
    text = report.table()
    for label in ("parameters", "gradients", "optimizer state", "saved for backward", "matmul input", "layers.1"):
        assert label in text
    cmp = compare_table({"stock": report, "lean": report})
    assert "lean/stock" in cmp and "1.00x" in cmp


def test_plot_writes_png_and_refuses_to_overwrite(report, tmp_path):
    path = tmp_path / "cmp.png"
    plot_reports({"a": report, "b": report}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        plot_reports({"a": report}, path)
    plot_reports({"a": report}, path, overwrite=True)
    with pytest.raises(ValueError, match=".png"):
        plot_reports({"a": report}, tmp_path / "x.jpg")
    with pytest.raises(TypeError):
        plot_reports({"a": {"params_bytes": 1}}, tmp_path / "y.png")


def test_default_loss_prefers_hf_loss_then_first_float_tensor():
    class Out(dict):
        loss = None

    t = torch.tensor([1.0, 3.0])
    assert default_loss(t).item() == 5.0
    assert default_loss((torch.tensor([1, 2]), t)).item() == 5.0  # skips the integer tensor
    assert default_loss({"logits": t}).item() == 5.0
    with_loss = Out(logits=t)
    with_loss.loss = torch.tensor(7.0)
    assert default_loss(with_loss).item() == 7.0
    with pytest.raises(TypeError, match="loss_fn"):
        default_loss({"ids": torch.tensor([1, 2])})


@pytest.mark.parametrize("bad, exc, match", [
    ("hello", TypeError, "inputs must be"),
    (np.ones((2, 3), dtype=np.float32), TypeError, "inputs must be"),
    ((np.ones((2, 3), dtype=np.float32),), TypeError, "numpy"),
    ({"x": [1.0, 2.0, 3.0]}, TypeError, "Python numbers"),
    ((None,), TypeError, "no torch.Tensor"),
])
def test_bad_inputs_raise_clearly(bad, exc, match):
    with pytest.raises(exc, match=match):
        measure_step(nn.Linear(3, 3), bad)


def test_model_without_trainable_parameters():
    model = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure_step(model, torch.randn(2, 3))
    with pytest.raises(TypeError, match="nn.Module"):
        measure_step(lambda x: x, torch.randn(2, 3))


def test_bad_losses_raise_clearly():
    model, x = nn.Linear(3, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="scalar"):
        measure_step(model, x, loss_fn=lambda out: out)
    with pytest.raises(TypeError, match="torch.Tensor"):
        measure_step(model, x, loss_fn=lambda out: 1.0)
    with torch.no_grad(), pytest.raises(ValueError, match="does not require grad"):
        measure_step(model, x)


@pytest.mark.parametrize("savers, module, random, kind", [
    ({"MulBackward0"}, "LlamaRMSNorm", False, "norm"),  # RMSNorm written as pow/mean/rsqrt/mul
    ({"MulBackward0"}, "LlamaMLP", False, "activation"),  # GLU product act(gate) * up
    ({"MulBackward0"}, "BertSelfAttention", True, "dropout_mask"),  # CPU F.dropout: bernoulli_ mask saved by mul
    ({"MulBackward0"}, "LlamaAttention", False, "other"),  # RoPE cos/sin
    ({"SoftmaxBackward0", "BmmBackward0"}, None, False, "softmax_attention"),  # shared P: attention wins
    ({"NativeLayerNormBackward0"}, "LayerNorm", False, "norm"),
    ({"AddmmBackward0", "NativeLayerNormBackward0"}, None, False, "matmul_input"),
    ({"LogSoftmaxBackward0"}, "BertForMaskedLM", False, "other"),
    ({"NativeDropoutBackward0"}, None, False, "dropout_mask"),
    ({"_LeanGELUFunctionBackward"}, None, False, "activation"),
    ({"EmbeddingBackward0"}, "Embedding", False, "other"),
])
def test_kind_rules(savers, module, random, kind):
    from leanformer.profile.kinds import classify

    assert classify(savers, module, random) == kind
