"""Short-sequence attention for quantized inference on CPU: leanformer's own kernel (``csrc/short_attention.cpp``),
swapped into a Hugging Face model by ``use_short_attention_``.

Why it belongs to quantization: once W8A8 runs the linear layers on int8 tiles, attention is the largest fp32
part of a BERT-sized forward. At tens of tokens per sequence PyTorch's CPU flash-attention kernel spends most of
its time on per-head setup; the kernel here does each head's scores, softmax and weighted sum in registers and
writes the (B, S, H, D) layout the model reshapes anyway (docs/quant.md, "Short-sequence attention").

It is exact attention in float32, not an approximation: scores are float32 dot products in another order than
torch's, the exponential has a relative error of ~2e-8, and weights below e^-60 of a row's largest are dropped,
so outputs agree with ``F.scaled_dot_product_attention`` to within ``ABS_BOUND`` on unit-scale inputs (tested
against a float64 reference in ``tests/quant/test_quant_attention.py``).

It runs only where it applies: CPU, float32, no gradient, no dropout, not causal, as many key heads as query heads,
keys up to ``MAX_KEYS``, no request for the attention weights. Anything else goes to transformers' own SDPA
attention, so a model switched to it still runs everywhere it did.
"""
from __future__ import annotations

import torch
from torch import nn

from .native import native_ops, required_native_ops

__all__ = ["ATTENTION_NAME", "MAX_KEYS", "ABS_BOUND", "short_attention", "reference_attention", "use_short_attention_",
           "short_attention_applies", "register_attention", "padding_mask", "kernel_mask"]

ATTENTION_NAME = "leanformer_short"  # the attention implementation name registered with transformers
MAX_KEYS = 256  # longer sequences keep torch's flash kernel, which tiles the keys
ABS_BOUND = 2e-6  # |short_attention - float64 attention| for unit-scale q, k, v (measured max ~4e-7)
_NO_MASK = torch.empty(0)


def reference_attention(q, k, v, mask=None, scale=None):
    """softmax(q k^T * scale + mask) v in float64 (bool masks: True attends), as (B, Sq, H, D) float32: the plain
    formula the kernel is tested against. Rows whose keys are all masked give zeros, as SDPA does on CPU."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    p = torch.softmax(s, dim=-1).nan_to_num(0.0) if mask is not None else torch.softmax(s, dim=-1)
    return (p @ v.double()).transpose(1, 2).float()


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """(B, H, Sq, D) queries, (B, H, Sk, D) keys and values (float32, CPU) -> (B, Sq, H, D) attention output.

    ``mask``: None, or broadcastable to (B, H, Sq, Sk) with size-1 dimensions, bool (True attends) or float
    (added to the scores). ``scale`` defaults to D ** -0.5.
    """
    ops = required_native_ops("short_attention")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 4:
            raise ValueError(f"short_attention: {name} must be a 4-D float32 CPU tensor, got {tuple(t.shape)} "
                             f"{t.dtype} on {t.device}")
    if mask is not None and mask.dtype not in (torch.bool, torch.float32):
        raise ValueError(f"short_attention: mask must be bool or float32, got {mask.dtype}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return ops.short_attention(q, k, v, kernel_mask(mask), q.shape[-1] ** -0.5 if scale is None else float(scale))


def kernel_mask(mask: torch.Tensor | None) -> torch.Tensor:
    """A mask as the native kernel takes it: 4-D (leading size-1 dimensions added) with unit stride along the keys,
    or an empty tensor for no mask."""
    if mask is None:
        return _NO_MASK
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask if mask.stride(-1) == 1 else mask.contiguous()


def short_attention_applies(module: nn.Module, q, k, v, mask, dropout: float, kwargs: dict) -> bool:
    """True when this call can take the short kernel; otherwise transformers' SDPA attention runs it."""
    causal = kwargs.get("is_causal", getattr(module, "is_causal", False))
    return (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32 and not causal
            and (dropout == 0.0 or not module.training) and not kwargs.get("output_attentions", False)
            and k.shape[1] == q.shape[1] and k.shape[2] <= MAX_KEYS
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and (mask is None or (mask.dtype in (torch.bool, torch.float32) and not mask.requires_grad))
            and native_ops() is not None)


def _hf_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs):
    """transformers' attention interface: (B, H, S, D) q, k, v -> ((B, S, H, D) output, no weights)."""
    if short_attention_applies(module, query, key, value, attention_mask, dropout, kwargs):
        return short_attention(query, key, value, attention_mask, scaling), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: torch.Tensor | None = None, local_size: int | None = None,
                 **kwargs):
    """The mask function registered with the name: transformers' ``sdpa_mask``, except for an encoder's plain
    padding mask (bidirectional, no offsets or local window, a (B, KV) 0/1 or bool mask that masks something),
    which it returns as (B, 1, 1, KV) bool instead of expanding to (B, 1, Q, KV): the same mask for every query
    row, which ``short_attention`` and torch's SDPA both broadcast. Why: ``sdpa_mask`` evaluates the mask
    function per (query, key) pair, ~0.2 ms of a 38 ms batch-32 W8A8 MiniLM forward on the Zen 4 VM. Everything
    else, including a mask that masks nothing (which ``sdpa_mask`` may drop), goes to ``sdpa_mask`` unchanged."""
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    if (mask_function is bidirectional_mask_function and local_size is None and q_offset == 0 and kv_offset == 0
            and not kwargs.get("use_vmap", False) and attention_mask is not None and attention_mask.dim() == 2
            and tuple(attention_mask.shape) == (batch_size, kv_length)
            and attention_mask.dtype in (torch.bool, torch.int64, torch.int32)):
        keep = attention_mask.bool()  # (B, KV)
        if not bool(keep.all()):
            return keep[:, None, None, :]  # (B, 1, 1, KV)
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, **kwargs)


def register_attention() -> None:
    """Add the name to transformers' attention and mask registries (once; other names are untouched). The mask
    is built as for SDPA (``padding_mask``): a custom name without a mask function would get no padding mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_NAME, _hf_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, padding_mask)


def use_short_attention_(model: nn.Module) -> bool:
    """Switch a transformers model that uses SDPA attention to the short-sequence kernel, in place. Returns
    whether it did: models on eager, flash or flex attention, and plain torch modules, are left as they are."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == ATTENTION_NAME:
        return True
    if current != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    return config._attn_implementation == ATTENTION_NAME
