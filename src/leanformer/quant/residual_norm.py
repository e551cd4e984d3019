"""``FusedResidualNorm``: a BERT-style output block, ``LayerNorm(dropout(dense(h)) + input)``, whose residual add,
LayerNorm and the next W8A8 layers' per-token quantization run as one pass over each row
(``csrc/residual_norm.cpp``); ``fusion.fuse_residual_norms_`` swaps it in.

It has the stock block's children under the stock names (``dense``, ``LayerNorm``, ``dropout``), so the state
dict is unchanged, and it runs the stock formula wherever the fused pass does not apply (training with dropout,
gradients, other devices or dtypes, no native kernels). The fused LayerNorm takes the row's moments in float32 by
two passes, in another order than torch's, so it is not bit-identical to ``nn.LayerNorm``; both stay within
``norm_reference``'s bound of the float64 LayerNorm of the same float32 sum (tested). The codes it hands over
equal ``quantize_rows`` of its own output, bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .kernels import INT8_PER_TOKEN, native_ops_for, offer_shared

__all__ = ["FusedResidualNorm", "norm_reference"]


def norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """LayerNorm(x + residual) in float64 from the float32 sum, and the bound the fused pass keeps to:
    2**-20 * (|weight * xhat| + |bias| + 1) * (1 + |mean| / std). The last factor is the float32 mean's
    cancellation when the row's spread is small against its mean (torch's LayerNorm has it too: measured up
    to 2.4e-4 relative at mean 5, std 1.4e-3, against 5.8e-4 for ours)."""
    s = (x + residual).double()  # the float32 sum both compute, exactly
    mean, var = s.mean(-1, keepdim=True), s.var(-1, unbiased=False, keepdim=True)
    xhat = (s - mean) / torch.sqrt(var + eps)
    ref = xhat * weight.double() + bias.double()
    condition = 1 + mean.abs() / torch.sqrt(var + eps)
    bound = 2.0 ** -20 * ((weight.double() * xhat).abs() + bias.double().abs() + 1) * condition
    return ref, bound


class FusedResidualNorm(nn.Module):
    """Stands where a ``*SelfOutput`` / ``*Output`` block was (``stock`` names its class)."""

    def __init__(self, dense: nn.Module, layer_norm: nn.LayerNorm, dropout: nn.Module, stock: str,
                 prepare_output: bool) -> None:
        super().__init__()
        if not self.supports(layer_norm):
            raise ValueError(f"FusedResidualNorm needs an affine LayerNorm over the last dimension, got {layer_norm}")
        self.dense, self.LayerNorm, self.dropout = dense, layer_norm, dropout
        self.stock, self.prepare_output = stock, prepare_output
        self.train(layer_norm.training)  # the mode of the block it replaces, not nn.Module's default

    @staticmethod
    def supports(layer_norm: nn.Module) -> bool:
        """True for the LayerNorms the fused pass computes: affine, with a bias, over the last dimension."""
        return (isinstance(layer_norm, nn.LayerNorm) and layer_norm.weight is not None and layer_norm.bias is not None
                and len(layer_norm.normalized_shape) == 1)

    @classmethod
    def wrap(cls, block: nn.Module, spec: dict) -> "FusedResidualNorm":
        """Around an existing stock block's children (checkpoint loading: the children are restored after)."""
        return cls(block.dense, block.LayerNorm, block.dropout, spec["stock"], spec["prepare_output"])

    def spec(self) -> dict:
        return {"stock": self.stock, "prepare_output": self.prepare_output}

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        ops = self._fused_ops(h, input_tensor)
        if ops is None:
            return self.LayerNorm(h + input_tensor)
        n = h.shape[-1]
        h2, r2 = h.reshape(-1, n), input_tensor.reshape(-1, n)  # (M, N)
        norm = self.LayerNorm
        out, codes, scale, finite = ops.residual_layer_norm(h2.contiguous(), r2.contiguous(), norm.weight, norm.bias,
                                                            norm.eps, self.prepare_output)
        if self.prepare_output and bool(finite):  # the next W8A8 layers find their input codes ready
            offer_shared(INT8_PER_TOKEN, out, (codes, scale))
        return out.view(h.shape)

    def _fused_ops(self, h: torch.Tensor, r: torch.Tensor):
        norm = self.LayerNorm
        if (h.dtype != torch.float32 or r.dtype != torch.float32 or h.shape != r.shape or h.dim() < 2
                or (self.dropout.training and getattr(self.dropout, "p", 0.0) > 0.0)
                or (torch.is_grad_enabled() and (h.requires_grad or r.requires_grad or norm.weight.requires_grad))
                or norm.weight.dtype != torch.float32 or norm.bias.dtype != torch.float32
                or h.shape[-1] != norm.normalized_shape[0]):
            return None
        return native_ops_for(h)

    def extra_repr(self) -> str:
        return f"{self.stock}: residual add, LayerNorm{' and the next int8 codes' if self.prepare_output else ''} fused"
