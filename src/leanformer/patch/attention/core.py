"""Lean scaled-dot-product attention: no S x S tensor kept for backward ("flash" mode), or P plus a 1-bit
dropout mask (Tempo's softmax-dropout-matmul combination, "tempo" mode).

Sources: FlashAttention (Dao et al., 2022) for the backward that recomputes P from Q, K and the per-row
logsumexp; Tempo (Andoorveedu et al., NeurIPS 2022, ``tempo/combined.py``) for keeping P and the dropout mask
but not dropout(P). Departures:
- pure PyTorch, chunked over (batch, query rows) so the transient S x S memory is bounded, on any device;
- the dropout mask is drawn exactly as stock ``F.dropout`` draws it on CPU (``bernoulli_(1 - p)`` from the
  default generator, one call over the whole (B, h, Sq, Sk) tensor), so a patched model reproduces the stock
  model's masks bit for bit under the same seed; it is then bit-packed (1 bit per element, per row) and the
  bool tensor is freed;
- GQA is handled by viewing Q as (B, h_kv, rep, Sq, d) against K, V of (B, h_kv, 1, Sk, d): no repeat_kv copy.

The output is allocated as (B, Sq, h, d) and returned as a (B, h, Sq, d) view, so Hugging Face's
``transpose(1, 2).contiguous()`` is free and the output projection saves the same storage we do.
"""
from __future__ import annotations

import math

import torch

from leanformer.patch.attention.bits import pack_rows, unpack_rows

# Transient budget for one chunk's S x S work tensors (elements; 4 MiB in fp32: cache-friendly on CPU).
_CHUNK_ELEMS = 1 << 20


def _rows_per_chunk(heads: int, sq: int, sk: int) -> int:
    return max(1, min(sq, _CHUNK_ELEMS // max(1, heads * sk)))


def _mask_5d(mask: torch.Tensor | None, hkv: int, rep: int) -> torch.Tensor | None:
    """HF masks are (B or 1, 1 or h, Sq, Sk): bool (True = attend) or additive float. -> 5D broadcastable."""
    if mask is None:
        return None
    if mask.dim() != 4:
        raise ValueError(f"attention mask must be 4-D (B, 1|h, Sq, Sk), got shape {tuple(mask.shape)}")
    if mask.shape[1] == 1:
        return mask.unsqueeze(2)  # (Bm, 1, 1, Sq, Sk)
    if mask.shape[1] == hkv * rep:
        return mask.unflatten(1, (hkv, rep))  # (Bm, hkv, rep, Sq, Sk)
    raise ValueError(f"attention mask has {mask.shape[1]} heads, expected 1 or {hkv * rep}")


def _scores(q5, k5, mask5, b, r0, r1, scale, is_causal, sk):
    """Masked, scaled scores of batch ``b``, query rows [r0, r1): (hkv, rep, R, Sk) in fp32."""
    s = torch.matmul(q5[b, :, :, r0:r1], k5[b].transpose(-1, -2)).float() * scale  # (hkv, rep, R, Sk)
    if mask5 is not None:
        m = mask5[b if mask5.shape[0] > 1 else 0, :, :, r0:r1]
        if m.dtype == torch.bool:
            # finfo.min rather than -inf: a fully masked row stays finite (uniform), like HF's eager mask
            s = s.masked_fill(~m, torch.finfo(s.dtype).min)
        else:
            s = s + m.float()
    if is_causal:
        rows = torch.arange(r0, r1, device=s.device)[:, None]
        cols = torch.arange(sk, device=s.device)[None, :]
        s = s.masked_fill(cols > rows, torch.finfo(s.dtype).min)  # upper-left aligned, as SDPA
    return s


class _LeanAttentionFunction(torch.autograd.Function):
    """softmax(Q K^T * scale + mask) -> dropout -> @ V, saving Q, K, V, O, logsumexp (and P if keep_probs)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, p, scale, is_causal, keep_probs):
        # q: (B, h, Sq, d); k, v: (B, hkv, Sk, d); mask: None | (B|1, 1|h, Sq, Sk)
        bsz, heads, sq, dim = q.shape
        hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
        rep = heads // hkv
        with torch.autocast(q.device.type, enabled=False):
            q5, k5, v5 = q.unflatten(1, (hkv, rep)), k.unsqueeze(2), v.unsqueeze(2)  # 5-D views
            mask5 = _mask_5d(mask, hkv, rep)
            keep_bits = keep = None
            if p > 0.0:
                # same RNG stream and shape as stock F.dropout on P: identical masks under the same seed
                keep = torch.empty((bsz, heads, sq, sk), dtype=torch.bool, device=q.device).bernoulli_(1.0 - p)
                keep_bits = pack_rows(keep)  # (B, h, Sq, ceil(Sk/8)) uint8; the bool mask is freed after forward
            out = torch.empty((bsz, sq, heads, dv), dtype=v.dtype, device=q.device)  # (B, Sq, h, dv)
            out5 = out.view(bsz, sq, hkv, rep, dv).permute(0, 2, 3, 1, 4)  # (B, hkv, rep, Sq, dv) view
            lse = torch.empty((bsz, hkv, rep, sq), dtype=torch.float32, device=q.device)
            probs = torch.empty((bsz, hkv, rep, sq, sk), dtype=torch.float32, device=q.device) if keep_probs else None
            step = _rows_per_chunk(heads, sq, sk)
            for b in range(bsz):
                for r0 in range(0, sq, step):
                    r1 = min(sq, r0 + step)
                    pr = _scores(q5, k5, mask5, b, r0, r1, scale, is_causal, sk)  # (hkv, rep, R, Sk)
                    mx = pr.amax(-1, keepdim=True)
                    total = pr.sub_(mx).exp_().sum(-1, keepdim=True)
                    pr.div_(total)  # softmax, as stock computes it: exp(s - max) / sum
                    lse[b, :, :, r0:r1] = (mx + total.log()).squeeze(-1)
                    if probs is not None:
                        probs[b, :, :, r0:r1] = pr
                    if keep is not None:
                        pr = _dropped(pr, keep[b, :, r0:r1].unflatten(0, (hkv, rep)), p, inplace=probs is None)
                    out5[b, :, :, r0:r1] = torch.matmul(pr.to(v.dtype), v5[b])
            del keep
        saved = [q, k, v, out, probs if keep_probs else lse]
        saved.append(keep_bits if keep_bits is not None else q.new_empty(0))
        saved.append(mask if mask is not None else q.new_empty(0))
        ctx.save_for_backward(*saved)
        ctx.cfg = (p, scale, is_causal, keep_probs, mask is not None, keep_bits is not None)
        return out.transpose(1, 2)  # (B, h, Sq, dv) view of a (B, Sq, h, dv) buffer

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, stat, keep_bits, mask = ctx.saved_tensors
        p, scale, is_causal, keep_probs, has_mask, has_drop = ctx.cfg
        bsz, heads, sq, _ = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        rep = heads // hkv
        with torch.autocast(q.device.type, enabled=False):
            q5, k5, v5 = q.unflatten(1, (hkv, rep)), k.unsqueeze(2), v.unsqueeze(2)
            mask5 = _mask_5d(mask, hkv, rep) if has_mask else None
            go5 = grad_out.unflatten(1, (hkv, rep))  # (B, hkv, rep, Sq, dv)
            out5 = out.view(bsz, sq, hkv, rep, -1).permute(0, 2, 3, 1, 4)  # (B, hkv, rep, Sq, dv)
            dq = torch.empty_like(q, memory_format=torch.contiguous_format)
            dq5 = dq.unflatten(1, (hkv, rep))
            dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)  # accumulated over row chunks
            dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
            step = _rows_per_chunk(heads, sq, sk)
            for b in range(bsz):
                for r0 in range(0, sq, step):
                    r1 = min(sq, r0 + step)
                    if keep_probs:
                        pr = stat[b, :, :, r0:r1]
                    else:
                        pr = _scores(q5, k5, mask5, b, r0, r1, scale, is_causal, sk)
                        pr = pr.sub_(stat[b, :, :, r0:r1].unsqueeze(-1)).exp_()  # P: (hkv, rep, R, Sk)
                    go = go5[b, :, :, r0:r1]  # (hkv, rep, R, dv)
                    dpr = torch.matmul(go, v5[b].transpose(-1, -2)).float()  # d(dropped P)
                    if has_drop:
                        keep = unpack_rows(keep_bits[b, :, r0:r1], sk).unflatten(0, (hkv, rep))
                        pd, dpr = _dropped(pr, keep, p, inplace=False), _dropped(dpr, keep, p, inplace=True)
                    else:
                        pd = pr
                    dv[b] += torch.matmul(pd.to(go.dtype).transpose(-1, -2), go).float().sum(1)
                    # softmax backward; rowsum(P * dP) = rowsum(dO * O) (FlashAttention's D), an R x d product
                    dsum = (go.float() * out5[b, :, :, r0:r1].float()).sum(-1, keepdim=True)  # (hkv, rep, R, 1)
                    ds = dpr.sub_(dsum).mul_(pr).mul_(scale).to(q.dtype)
                    dq5[b, :, :, r0:r1] = torch.matmul(ds, k5[b])
                    dk[b] += torch.matmul(ds.transpose(-1, -2), q5[b, :, :, r0:r1]).float().sum(1)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def _dropped(x, keep, p, inplace):
    """Stock dropout arithmetic, x * (mask / (1 - p)), as where(keep, x * (1 / (1 - p)), 0): the same values
    bit for bit (the kept factor is the fp32 result of 1 / (1 - p) either way)."""
    factor = torch.ones((), dtype=torch.float32, device=x.device).div_(1.0 - p)
    x = x.mul_(factor) if inplace else x * factor
    return x.masked_fill_(~keep, 0.0)


def lean_attention(q, k, v, mask=None, *, dropout_p=0.0, scale=None, is_causal=False, mode="flash"):
    """Attention over (B, h, Sq, d) queries and (B, h_kv, Sk, d) keys/values; returns (B, Sq, h, dv).

    ``mode``: "flash" keeps Q, K, V, O and per-row logsumexp (+1 bit per P element with dropout);
    "tempo" keeps P instead of the logsumexp (no recompute of Q K^T in backward);
    "sdpa" calls ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels keep no S x S tensor
    when they accept the inputs; CPU falls back to the math kernel, which keeps P, when dropout is on).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, h, S, d), got {q.dim()}, {k.dim()}, {v.dim()} dims")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if mode == "sdpa":
        gqa = q.shape[1] != k.shape[1]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, is_causal=is_causal, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous()
    if mode not in ("flash", "tempo"):
        raise ValueError(f"attention mode must be 'flash', 'tempo' or 'sdpa', got {mode!r}")
    if math.isclose(dropout_p, 0.0):
        dropout_p = 0.0
    out = _LeanAttentionFunction.apply(q, k, v, mask, dropout_p, scale, bool(is_causal), mode == "tempo")
    return out.transpose(1, 2)  # (B, Sq, h, dv), contiguous
