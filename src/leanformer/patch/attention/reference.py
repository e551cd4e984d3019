"""Plain eager attention: the yardstick the lean attention is tested against (tests and benchmarks only).

Exactly Hugging Face's ``eager_attention_forward`` arithmetic (matmul, * scale, + mask, softmax, F.dropout,
matmul), with GQA by ``repeat_interleave``, bool masks as finfo.min fills, and the upper-left causal mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_attention(q, k, v, mask=None, *, dropout_p=0.0, scale=None, is_causal=False):
    """(B, h, Sq, d), (B, h_kv, Sk, d) x2 -> (B, Sq, h, dv); dropout draws from the default generator."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)  # (B, h, Sk, d)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, h, Sq, Sk)
    low = torch.finfo(s.dtype).min
    if mask is not None:
        s = s.masked_fill(~mask, low) if mask.dtype == torch.bool else s + mask
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), low)
    p = F.dropout(torch.softmax(s, -1, dtype=torch.float32), p=dropout_p, training=dropout_p > 0)
    return torch.matmul(p.to(v.dtype), v).transpose(1, 2)
