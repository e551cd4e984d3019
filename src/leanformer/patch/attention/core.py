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

# Transient budget for one chunk's S x S work tensors (elements; 8 MiB in fp32).
_CHUNK_ELEMS = 1 << 21


def _rows_per_chunk(heads: int, sq: int, sk: int) -> int:
    return max(1, min(sq, _CHUNK_ELEMS // max(1, heads * sk)))


def _check_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> None:
    """An HF mask: (B or 1, 1 or h, Sq, Sk), bool (True = attend) or additive float."""
    if mask is None:
        return
    b, h, sq, sk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if mask.dim() != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, h) or mask.shape[2:] != (sq, sk):
        raise ValueError(f"attention mask must be ({b}|1, {h}|1, {sq}, {sk}), got shape {tuple(mask.shape)}")


class _Chunk:
    """Index helper for one (batch b, query rows [r0, r1)) block; heads are grouped (h_kv, rep) for GQA."""

    def __init__(self, q, k, v, mask, scale, is_causal, b, r0, r1):
        self.hkv, self.rep = k.shape[1], q.shape[1] // k.shape[1]
        self.b, self.r0, self.r1, self.scale = b, r0, r1, scale
        self.q3 = q[b, :, r0:r1].unflatten(0, (self.hkv, self.rep)).flatten(1, 2)  # (hkv, rep*R, d)
        self.k3, self.v3 = k[b], v[b]  # (hkv, Sk, d)
        self.mask, self.is_causal = mask, is_causal

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """(hkv, rep*R, X) -> (h, R, X) view, matching (B, h, Sq, X) head order."""
        return t.unflatten(1, (self.rep, -1)).flatten(0, 1)

    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """(h, R, X) -> (hkv, rep*R, X): the inverse of ``rows``."""
        return t.unflatten(0, (self.hkv, -1)).flatten(1, 2)

    def scores(self) -> torch.Tensor:
        """Scaled, masked scores (hkv, rep*R, Sk) in fp32 (one GEMM with the scale fused in)."""
        zero = self.q3.new_zeros(())
        s = torch.baddbmm(zero.expand(1, 1, 1), self.q3, self.k3.transpose(-1, -2), beta=0.0, alpha=self.scale)
        s = s.float()
        s4 = self.rows(s)  # (h, R, Sk) view
        if self.mask is not None:
            m = self.mask[self.b if self.mask.shape[0] > 1 else 0, :, self.r0:self.r1]  # (1|h, R, Sk)
            if m.dtype == torch.bool:
                # finfo.min rather than -inf: a fully masked row stays finite (uniform), like HF's eager mask
                s4.masked_fill_(~m, torch.finfo(s.dtype).min)
            else:
                s4.add_(m)
        if self.is_causal:
            rows = torch.arange(self.r0, self.r1, device=s.device)[:, None]
            cols = torch.arange(s.shape[-1], device=s.device)[None, :]
            s4.masked_fill_(cols > rows, torch.finfo(s.dtype).min)  # upper-left aligned, as SDPA
        return s


def _keep_scale(keep: torch.Tensor, p: float) -> torch.Tensor:
    """Stock CPU dropout's multiplier, ``noise.div_(1 - p)``: 0 or fp32(1 / (1 - p)), computed the same way so
    x * scale is bit-identical to stock."""
    return keep.to(torch.float32).div_(1.0 - p)


class _LeanAttentionFunction(torch.autograd.Function):
    """softmax(Q K^T * scale + mask) -> dropout -> @ V, saving Q, K, V, O, logsumexp (or P if keep_probs)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, p, scale, is_causal, keep_probs):
        # q: (B, h, Sq, d); k, v: (B, hkv, Sk, d); mask: None | (B|1, 1|h, Sq, Sk)
        bsz, heads, sq, _ = q.shape
        hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
        with torch.autocast(q.device.type, enabled=False):
            keep = keep_bits = None
            if p > 0.0:
                # same RNG call and shape as stock F.dropout on P (CPU): identical masks under the same seed
                keep = torch.empty((bsz, heads, sq, sk), dtype=torch.bool, device=q.device).bernoulli_(1.0 - p)
                keep_bits = pack_rows(keep)  # (B, h, Sq, ceil(Sk/8)) uint8; the bool mask dies with forward
            out = torch.empty((bsz, sq, heads, dv), dtype=v.dtype, device=q.device)  # (B, Sq, h, dv)
            lse = torch.empty((bsz, heads, sq), dtype=torch.float32, device=q.device)
            probs = torch.empty((bsz, heads, sq, sk), dtype=torch.float32, device=q.device) if keep_probs else None
            step = _rows_per_chunk(heads, sq, sk)
            for b in range(bsz):
                for r0 in range(0, sq, step):
                    c = _Chunk(q, k, v, mask, scale, is_causal, b, r0, min(sq, r0 + step))
                    s = c.scores()  # (hkv, rep*R, Sk)
                    mx = s.amax(-1)
                    pr = torch.softmax(s, -1)
                    del s
                    # the row max of P is exp(0) / sum = 1 / sum, so lse = max + log(sum) = max - log(max P)
                    lse[b, :, c.r0:c.r1] = c.rows((mx - pr.amax(-1).log()).unsqueeze(-1)).squeeze(-1)
                    if probs is not None:
                        probs[b, :, c.r0:c.r1] = c.rows(pr)
                    if keep is not None:
                        ks = _keep_scale(c.grouped(keep[b, :, c.r0:c.r1]), p)  # (hkv, rep*R, Sk)
                        pr = pr.mul_(ks) if probs is None else pr * ks
                    o = torch.bmm(pr.to(v.dtype), c.v3)  # (hkv, rep*R, dv)
                    out[b, c.r0:c.r1] = c.rows(o).transpose(0, 1)
            del keep
        ctx.save_for_backward(q, k, v, out, probs if keep_probs else lse,
                              keep_bits if keep_bits is not None else q.new_empty(0),
                              mask if mask is not None else q.new_empty(0))
        ctx.cfg = (p, scale, is_causal, keep_probs, mask is not None, keep_bits is not None)
        return out.transpose(1, 2)  # (B, h, Sq, dv) view of a (B, Sq, h, dv) buffer

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, stat, keep_bits, mask = ctx.saved_tensors
        p, scale, is_causal, keep_probs, has_mask, has_drop = ctx.cfg
        bsz, heads, sq, _ = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        mask = mask if has_mask else None
        with torch.autocast(q.device.type, enabled=False):
            dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            # accumulated over row chunks, in the input dtype as stock bmm backward does
            dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
            dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
            step = _rows_per_chunk(heads, sq, sk)
            for b in range(bsz):
                for r0 in range(0, sq, step):
                    c = _Chunk(q, k, v, mask, scale, is_causal, b, r0, min(sq, r0 + step))
                    if keep_probs:
                        pr = c.grouped(stat[b, :, c.r0:c.r1])
                    else:
                        pr = c.scores().sub_(c.grouped(stat[b, :, c.r0:c.r1].unsqueeze(-1))).exp_()  # P
                    go = c.grouped(grad_out[b, :, c.r0:c.r1])  # (hkv, rep*R, dv)
                    dpr = torch.bmm(go, c.v3.transpose(-1, -2)).float()  # d(dropped P): (hkv, rep*R, Sk)
                    if has_drop:
                        ks = _keep_scale(c.grouped(unpack_rows(keep_bits[b, :, c.r0:c.r1], sk)), p)
                        pd = pr * ks
                        dpr.mul_(ks)
                    else:
                        pd = pr
                    dv[b].baddbmm_(pd.to(go.dtype).transpose(-1, -2), go)
                    ds = torch._softmax_backward_data(dpr, pr, -1, pr.dtype).to(q.dtype)  # P * (dP - rowsum(P dP))
                    dq[b, :, c.r0:c.r1] = c.rows(torch.bmm(ds, c.k3).mul_(scale))
                    dk[b].baddbmm_(ds.transpose(-1, -2), c.q3, alpha=scale)
        return dq, dk, dv, None, None, None, None, None


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
    _check_mask(mask, q, k)
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
