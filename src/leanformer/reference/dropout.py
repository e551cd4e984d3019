"""Dropout with an explicit keep-mask, and eager attention's dropout(softmax(s)) @ v."""
from __future__ import annotations

import torch


def dropout_ref(x, keep, p):
    """Inverted dropout with a given boolean keep-mask."""
    return x * keep.to(x.dtype) / (1.0 - p) if p < 1.0 else x * 0.0


def softmax_dropout_matmul_ref(scores, v, keep, p):
    """(B, H, S, T) scores, (B, H, T, D) v, (B, H, S, T) keep -> (B, H, S, D)."""
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    return dropout_ref(probs, keep, p) @ v
