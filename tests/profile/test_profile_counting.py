"""measure_step's saved-bytes count against counts derived by hand on small hand-built modules."""
import pytest
import torch
from torch import nn

from leanformer.profile import measure_step

F32 = 4  # bytes per fp32 element


def _sum(out):
    return out.sum()  # SumBackward saves no tensor, so the loss adds nothing to the count


def _nbytes(t):
    return t.numel() * t.element_size()


@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_linear_saves_its_input_once(x_requires_grad):
    lin = nn.Linear(7, 5)
    x = torch.randn(3, 7, requires_grad=x_requires_grad)
    r = measure_step(lin, x, loss_fn=_sum)
    # addmm saves its input for dW; with x requiring grad it also saves W^T, a view of a parameter: not counted
    assert r.saved_activation_bytes == 3 * 7 * F32
    assert r.saved_tensor_count == 1
    assert r.by_module == {"": 3 * 7 * F32}
    assert r.by_kind["matmul_input"] == 3 * 7 * F32


class _Reuse(nn.Module):
    """h feeds two Linears: autograd saves h twice, it is one storage."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 11), nn.Linear(11, 3), nn.Linear(11, 3)

    def forward(self, x):
        h = self.a(x)  # (B, 11)
        return self.b(h) + self.c(h)


def test_tensor_reused_by_two_ops_counts_once():
    x = torch.randn(2, 5)
    r = measure_step(_Reuse(), x, loss_fn=_sum)
    assert r.saved_activation_bytes == (2 * 5 + 2 * 11) * F32
    assert r.by_module == {"a": 2 * 5 * F32, "b": 2 * 11 * F32}  # h is attributed to its first saver


class _Views(nn.Module):
    """Two non-overlapping views of one storage are saved by a mul: one storage."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, x):
        h = self.proj(x)  # (B, 8)
        left, right = h[:, :4], h[:, 4:]  # views, non-contiguous
        return left * right


def test_views_of_one_storage_count_once():
    x = torch.randn(5, 3)
    r = measure_step(_Views(), x, loss_fn=_sum)
    assert r.saved_tensor_count == 2
    assert r.saved_activation_bytes == (5 * 3 + 5 * 8) * F32


class _ParamsAndBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6))
        self.register_buffer("scale", torch.randn(6))

    def forward(self, x):
        return (x * self.weight) * self.scale  # saves x, weight (param) and scale (buffer)


def test_parameters_and_buffers_are_not_counted():
    x = torch.randn(4, 6, requires_grad=True)
    r = measure_step(_ParamsAndBuffers(), x, loss_fn=_sum)
    assert r.saved_activation_bytes == 4 * 6 * F32


def test_grads_and_params_bytes():
    model = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 2))
    model[2].weight.requires_grad_(False)
    r = measure_step(model, torch.randn(3, 7), loss_fn=_sum)
    params = sum(_nbytes(p) for p in model.parameters())
    assert r.params_bytes == params
    assert r.grads_bytes == params - _nbytes(model[2].weight)
    assert r.optimizer_state_bytes == 0


def test_adamw_state_is_two_fp32_moments_plus_step_scalars():
    model = nn.Sequential(nn.Linear(7, 13), nn.GELU(), nn.Linear(13, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    r = measure_step(model, torch.randn(2, 7), optimizer=opt)
    n_tensors = len(list(model.parameters()))
    step_bytes = torch.empty((), dtype=torch.get_default_dtype()).element_size()  # AdamW's step is a 0-d tensor
    assert r.optimizer_state_bytes == 2 * r.params_bytes + n_tensors * step_bytes
    assert all(s["exp_avg"].shape == p.shape for p, s in opt.state.items())  # the step really ran


def test_sgd_without_momentum_has_no_state():
    model = nn.Linear(4, 4)
    r = measure_step(model, torch.randn(2, 4), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert r.optimizer_state_bytes == 0


class _StashFn(torch.autograd.Function):
    """Keeps x through save_for_backward and x*x as a ctx attribute (invisible to saved_tensors_hooks)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.sq = x * x
        return x * 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 + 0 * ctx.sq * x


class _Stash(nn.Module):
    def forward(self, x):
        return _StashFn.apply(x)


def test_custom_function_ctx_attributes_are_counted():
    x = torch.randn(3, 5, requires_grad=True)
    model = nn.Sequential(nn.Linear(5, 5), _Stash())
    r = measure_step(model, x, loss_fn=_sum)
    h = 3 * 5 * F32
    assert r.by_module == {"0": h, "1": h, "(autograd.Function ctx attributes)": h}
    assert any("ctx attributes" in n for n in r.notes)


def test_quantized_wrapper_subclass_weights_count_their_packed_bytes():
    """torchao's Int8Tensor has no storage of its own: its packed int8 data and scales are what is counted."""
    quantization = pytest.importorskip("torchao.quantization")
    model = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32))
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())
    model[0].weight.requires_grad_(False)
    from leanformer.profile.storage import storages

    inner = storages(model[0].weight)
    assert len(inner) >= 2 and any(n == 64 * 32 for _, n in inner)  # 1 byte per weight + scale tensors
    r = measure_step(model, torch.randn(3, 64, requires_grad=True), loss_fn=_sum)
    plain = sum(_nbytes(p) for n, p in model.named_parameters() if n != "0.weight")
    assert r.params_bytes == plain + sum(n for _, n in inner)
    assert r.params_bytes < 64 * 32 * F32  # far below the fp32 weight alone
