"""Plain LayerNorm / RMSNorm written out with elementary ops (autograd differentiates them)."""
from __future__ import annotations

import torch


def layer_norm_ref(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)           # biased variance, as LayerNorm
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm_ref(x, weight, eps=1e-6):
    """Hugging Face LlamaRMSNorm: statistics in fp32, normalised value cast back, then ``weight *``."""
    x32 = x.float()
    n = x32 / torch.sqrt((x32 * x32).mean(-1, keepdim=True) + eps)
    return weight * n.to(x.dtype)
