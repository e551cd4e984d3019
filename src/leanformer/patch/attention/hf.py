"""Shared part of the lean Hugging Face attention modules: choose the lean kernel for one call.

Each architecture spec subclasses its HF attention class (so ``isinstance`` checks in transformers still hold)
and overrides ``forward`` with a copy of the stock forward whose attention-interface call is replaced by
``self._lean_attend``. Nothing global is touched: the stock class and ``ALL_ATTENTION_FUNCTIONS`` stay as they
are, and other models in the process are unaffected.
"""
from __future__ import annotations

import torch

from leanformer.patch.attention.core import lean_attention
from leanformer.patch.engine import clone_as


class LeanAttentionMixin:
    """Adds ``_lean_attend``; ``lean_mode`` is set by the engine from ``LeanConfig.attention``."""

    lean_mode: str = "auto"

    def _lean_attend(self, q, k, v, mask, *, dropout_p: float, scaling: float | None, is_causal=None):
        # q: (B, h, Sq, d); k, v: (B, h_kv, Sk, d) -> (B, Sq, h, d)
        if mask is not None and mask.requires_grad:
            raise ValueError("leanformer attention does not differentiate through the attention mask; "
                             "use attention='off' for models with learned attention biases")
        if k.dtype != q.dtype or v.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        causal = is_causal if is_causal is not None else getattr(self, "is_causal", False)
        # as HF's sdpa path: causal via flag only when there is no explicit mask and more than one query
        causal = bool(causal) and mask is None and q.shape[2] > 1
        mode = self.lean_mode
        if mode == "auto":
            # fused SDPA keeps no S x S tensor when no dropout is drawn; with dropout on CPU it would fall back
            # to the math kernel (keeps P and dropout(P)), so the lean flash Function takes over
            mode = "sdpa" if dropout_p == 0.0 or q.device.type == "cuda" else "flash"
        if mode == "sdpa" and mask is not None and mask.dtype != q.dtype:
            mask = _additive_mask(mask, q.dtype)
        return lean_attention(q, k, v, mask, dropout_p=dropout_p, scale=scaling, is_causal=causal, mode=mode)

    def _cache_update(self, past_key_values, k, v):
        """Append this layer's K/V to the self-attention cache (an encoder-decoder cache keeps it as
        ``self_attention_cache``); without a cache, K and V pass through."""
        if past_key_values is None:
            return k, v
        from transformers.cache_utils import EncoderDecoderCache

        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values = past_key_values.self_attention_cache
        return past_key_values.update(k, v, self.layer_idx)

    def _wants_stock(self, kwargs) -> bool:
        """Attention probabilities requested: only the stock path returns them."""
        return bool(kwargs.get("output_attentions", False))


def lean_attention_builder(cls: type):
    """Rule builder: ``cls`` (a lean subclass of an HF attention class) cloned from the stock module, in the
    config's attention mode."""
    def build(module, cfg):
        new = clone_as(cls, module)
        new.lean_mode = cfg.attention
        return new

    return build


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as an additive ``dtype`` mask, built once per mask tensor and shared by every layer.

    CPU SDPA converts a bool mask to a float one inside each call and saves that copy for backward (B*S*S*4
    bytes per layer); converting once, cached on the mask tensor itself (invalidated by its version counter),
    makes all layers save the same storage. Not cached while compiling (the compiler sees plain ops).
    """
    def build() -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        return mask.to(dtype)

    if torch.compiler.is_compiling():
        return build()
    version, cache = getattr(mask, "_leanformer_additive", (None, None))
    if version != mask._version or cache is None:
        cache = {}
        mask._leanformer_additive = (mask._version, cache)
    if dtype not in cache:
        cache[dtype] = build()
    return cache[dtype]
