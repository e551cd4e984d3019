"""Eager attention's ``dropout(softmax(scores)) @ v`` keeping P and a 1-bit mask (Tempo's "Combined").

Stock eager attention keeps the probabilities P (softmax backward), the dropout mask (fp32 on CPU,
bool on CUDA) *and* ``dropout(P)`` (saved by the matmul with V): two S x S tensors plus the mask. Tempo
(NeurIPS 2022, ``tempo/combined.py``) fuses the three ops and rebuilds ``dropout(P) = P * mask / keep``
in backward; it keeps a byte mask, we keep it bit-packed. Exact: the same random draws and arithmetic as
``F.dropout`` (see ``dropout.py``), the same softmax backward kernel.

``softmax_dtype=torch.float32`` reproduces Hugging Face LLaMA's ``softmax(s, dtype=float32).to(q.dtype)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._amp import AmpState, no_autocast
from .bitpack import pack_bits, unpack_bits
from .dropout import _FUSED_DEVICES, _apply_mask, dropout_with_mask


def _mask(t, keep, p, fused):
    """dropout's multiply: ``keep`` is a bool mask (fused kernels) or the prebuilt noise (fused is None)."""
    return t * keep if fused is None else _apply_mask(t, keep, p, fused)


def _softmax(scores, softmax_dtype):
    if softmax_dtype is None:
        return F.softmax(scores, dim=-1)
    return F.softmax(scores, dim=-1, dtype=softmax_dtype)


class _SoftmaxDropoutMatmulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, v, p: float, softmax_dtype):
        probs = _softmax(scores, softmax_dtype)                  # (B, H, S, T)
        pc = probs.to(v.dtype) if softmax_dtype is not None else probs    # HF: .to(query.dtype)
        dropped, keep = dropout_with_mask(pc, p) if p > 0 else (pc, None)
        amp = AmpState.capture(v)
        cdt = amp.lower_dtype(dropped)
        with no_autocast(v):
            vc = v.to(cdt)
            out = torch.matmul(dropped.to(cdt), vc)                       # (B, H, S, D)
        packed = pack_bits(keep) if keep is not None else None
        ctx.save_for_backward(probs, vc, packed)
        ctx.meta = (p, pc.dtype, cdt, scores.dtype, v.dtype, probs.shape, scores.device.type in _FUSED_DEVICES)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        probs, vc, packed = ctx.saved_tensors
        p, pc_dtype, cdt, s_dtype, v_dtype, shape, fused = ctx.meta
        with no_autocast(dout):
            dout = dout.to(cdt)
            pc = probs.to(pc_dtype)
            keep = unpack_bits(packed, shape) if packed is not None else None
            if keep is not None and not fused:   # build the CPU noise tensor once, use it twice
                keep = keep.to(pc_dtype).div_(1 - p) if p < 1 else torch.zeros_like(pc)
                fused = None
            dropped = pc if keep is None else _mask(pc, keep, p, fused)        # dropout(P), rebuilt exactly
            dv = torch.matmul(dropped.to(cdt).transpose(-1, -2), dout).to(v_dtype) if ctx.needs_input_grad[1] else None
            ds = None
            if ctx.needs_input_grad[0]:
                dd = torch.matmul(dout, vc.transpose(-1, -2)).to(pc_dtype)       # d dropout(P)
                dpc = dd if keep is None else _mask(dd, keep, p, fused)
                dprobs = dpc.to(probs.dtype)
                ds = torch._softmax_backward_data(dprobs, probs, -1, s_dtype)
        return ds, dv, None, None


def lean_softmax_dropout_matmul(scores: torch.Tensor, v: torch.Tensor, p: float = 0.0, training: bool = True,
                                softmax_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``F.dropout(F.softmax(scores, -1), p, training) @ v`` keeping P, V and a 1-bit mask.

    scores: (..., S, T) already scaled and masked; v: (..., T, D) -> (..., S, D).
    """
    if scores.shape[-1] != v.shape[-2] or scores.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"lean_softmax_dropout_matmul: scores {tuple(scores.shape)} and v {tuple(v.shape)} "
                         "do not line up as (..., S, T) and (..., T, D)")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"lean_softmax_dropout_matmul: p must be in [0, 1], got {p}")
    p = p if training else 0.0
    if not (torch.is_grad_enabled() and (scores.requires_grad or v.requires_grad)):
        probs = _softmax(scores, softmax_dtype)
        probs = probs.to(v.dtype) if softmax_dtype is not None else probs
        return torch.matmul(dropout_with_mask(probs, p)[0] if p > 0 else probs, v)
    return _SoftmaxDropoutMatmulFunction.apply(scores, v, p, softmax_dtype)
