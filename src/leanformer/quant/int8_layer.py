"""A fused-int8 BERT layer as one sequence of native calls: the step after ``fast_layer``'s shorter call path, for
layers whose every product already runs on the fused int8 kernel (W8A8 or W4A8 with ``fuse=True``).

Why: a layer's module calls cost Python time whatever the batch size: each quantized Linear goes through
``QuantizedLinear.forward`` -> ``choose_kernel`` -> ``run_kernel`` -> ``_w8a8`` -> ``prepare_shared``, and each block
through ``nn.Module.__call__``. ``run_int8_layer`` calls the same kernels with the same operands, in the same order,
and hands each kernel's int8 codes straight to the next product instead of through ``offer_shared`` /
``prepare_shared``. On MiniLM W8A8 (Zen 4 VM, 1 thread, forwards alternating with the module calls) that is ~60 us
per layer: 1.13x at batch 1 and ~1.01x at batch 32, where the products dominate.

What it computes is what the module path computes, bit for bit (tested with ``torch.equal``):
- the input's per-token codes: ``quantize_per_token_shared`` (the previous layer's fused norm offered them);
- query, key and value: the fused int8 product of each, with its own packed weight and scales; for W8A8 as one
  product with the three weights stacked (the same bits, column for column);
- attention: ``attention._hf_attention`` on the same (B, H, S, D) views, so the short kernel or its SDPA fallback;
- the self-output block: the context's codes (``quantize_activations``), the product, then the fused residual add
  + LayerNorm, which also returns the next codes (equal to ``quantize_rows`` of its output); for W8A8 the kernel
  normalises each finished row block while it is in cache (``amx.run_amx_int8_norm``: ``residual_layer_norm``'s
  bits, one pass over the activation fewer);
- the intermediate block: the product with the GELU in its epilogue and the next codes from the same kernel; for
  W8A8 only the codes (``amx.run_amx_int8_codes``: the float output is never written; a NaN or inf row runs the
  product again with it);
- the output block: the product and the fused residual norm, whose codes are offered to the next layer.
Where a kernel reports a NaN or inf row it hands no codes over, and the next step quantizes its input itself, as
the module path does.

It applies only where every module is the one this sequence stands for and nothing could observe the difference:
inference without gradients, the attention and both output blocks' dropouts in eval mode, no hook on a module the
module calls would call, float32 contiguous CPU input, all six Linears ``QuantizedLinear`` with int8 activations
on the fused kernel, ``FusedActivation`` for the GELU and ``FusedResidualNorm`` for both output blocks. Anything
else keeps ``FastBertLayer``'s module calls. ``set_policy(int8_layers=False)`` turns it off.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import kernels
from .amx import activation_code, pack_amx_weight, run_amx_int8, run_amx_int8_codes, run_amx_int8_norm
from .attention import _hf_attention
from .kernels import (INT8_PER_TOKEN, _amx_applies, _amx_int8_product, _amx_packed, _w8a8_scale, get_policy,
                      native_ops_for, offer_shared, quantize_per_token_shared)
from .modules import FusedActivation, QuantizedLinear
from .residual_norm import FusedResidualNorm

__all__ = ["int8_layer_plan", "run_int8_layer"]


class Int8LayerPlan(NamedTuple):
    """The modules ``run_int8_layer`` reads, found by ``int8_layer_plan`` (read once per call: nn.Module's attribute
    lookup costs ~0.7 us a step, which added up to ~40 us per layer when every helper walked the tree again)."""
    attention: nn.Module  # BertSelfAttention: query, key, value, head size, scaling
    self_output: FusedResidualNorm
    intermediate: QuantizedLinear  # the intermediate block's dense, with the GELU in its epilogue
    output: FusedResidualNorm


# The checks below run on every call of every layer, so they read children and tensors from the modules' own
# dicts: nn.Module's attribute lookup for a child or buffer costs ~0.7 us, and the plain reads put this check at
# ~50 us per layer, a tenth of a batch-1 MiniLM layer.
def _int8_linear(mod: nn.Module, activation: str | None) -> bool:
    """A QuantizedLinear whose forward would run the fused int8 kernel with this epilogue activation."""
    if type(mod) is not QuantizedLinear or mod.act_bits != 8 or mod.activation != activation or _hooked(mod):
        return False
    bias = mod._buffers["bias"]
    return (bias is None or bias.dtype == torch.float32) and _amx_applies(mod)


def _fused_norm(block: nn.Module) -> bool:
    """A FusedResidualNorm that would take its fused pass on float32 inputs (no active dropout, float32 affine),
    with none of its modules hooked."""
    if type(block) is not FusedResidualNorm:
        return False
    parts = block._modules
    norm, dropout = parts["LayerNorm"]._parameters, parts["dropout"]
    # its LayerNorm module is not called on the fused pass (only its parameters are read), so its hooks do not count
    return (_int8_linear(parts["dense"], None) and not dropout.training and not _hooked(block) and not _hooked(dropout)
            and norm["weight"].dtype == torch.float32 and norm["bias"].dtype == torch.float32)


def _hooked(mod: nn.Module) -> bool:
    """A hook on the module (the sequence does not call it, so the hook would not fire)."""
    return bool(mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks or mod._backward_pre_hooks)


def int8_layer_plan(layer: nn.Module, hidden_states: torch.Tensor) -> Int8LayerPlan | None:
    """The plan ``run_int8_layer`` follows when it gives exactly what the layer's module calls would (see above),
    else None. ``layer`` is a BertLayer whose attention blocks ``FastBertLayer`` has checked (types, hooks)."""
    if not (get_policy().int8_layers and not torch.is_grad_enabled() and hidden_states.dtype == torch.float32
            and hidden_states.dim() == 3 and hidden_states.is_contiguous()
            and native_ops_for(hidden_states) is not None):
        return None
    attention, block, intermediate = (layer._modules[name] for name in ("attention", "output", "intermediate"))
    sa, self_output = attention._modules["self"], attention._modules["output"]
    qkv = sa._modules
    act, inter = intermediate._modules["intermediate_act_fn"], intermediate._modules["dense"]
    if not (not sa.training and not _hooked(intermediate) and not _hooked(act)
            and type(act) is FusedActivation and _int8_linear(inter, "gelu")
            and all(_int8_linear(qkv[name], None) for name in ("query", "key", "value"))
            and hidden_states.shape[-1] == qkv["query"].in_features
            and _fused_norm(self_output) and _fused_norm(block)):
        return None
    return Int8LayerPlan(sa, self_output, inter, block)


def _codes(y2: torch.Tensor, res) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token codes of ``y2`` from a kernel's (out, codes, scale, finite), or computed here when it found a
    NaN or inf row (the module path's next layer then quantizes the output itself, the same way)."""
    _, codes, scale, finite = res
    # through the module: tests wrap kernels.quantize_activations to count the quantizations a forward makes
    return (codes, scale) if bool(finite) else kernels.quantize_activations(y2)


def run_int8_layer(plan: Int8LayerPlan, hidden_states: torch.Tensor,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The layer's output for (B, S, H) ``hidden_states``, following ``int8_layer_plan``'s plan."""
    ops = native_ops_for(hidden_states)
    sa = plan.attention
    batch, seq, hidden = hidden_states.shape
    x2 = hidden_states.view(-1, hidden)  # (M, H)
    xq, xs = quantize_per_token_shared(x2)  # (M, H) int8, (M, 1)
    q, k, v = (t.transpose(1, 2) for t in _query_key_value(ops, sa, xq, xs, batch, seq))  # (B, heads, S, D)
    context, _ = _hf_attention(sa, q, k, v, attention_mask, dropout=0.0, scaling=sa.scaling)  # (B, S, heads, D)
    context = context.reshape(batch * seq, -1).contiguous()  # (M, H)
    # (out, codes, scale, finite) of LayerNorm(attention output + input)
    attended = _residual_norm(ops, plan.self_output, *kernels.quantize_activations(context), x2)
    ffn_codes = _intermediate_codes(ops, plan.intermediate, *_codes(attended[0], attended))
    y, codes, scale, finite = _residual_norm(ops, plan.output, *ffn_codes, attended[0])
    if bool(finite):  # the next layer (or any W8A8 Linear reading y) finds its input codes ready
        offer_shared(INT8_PER_TOKEN, y, (codes, scale))
    return y.view(batch, seq, hidden)


def _query_key_value(ops, sa: nn.Module, xq, xs, batch: int, seq: int):
    """Query, key and value as (B, S, heads, D) views. For W8A8 one product with the three weights stacked
    (``_stacked_qkv_weight``; the same sums, scales and bias per column, so the same bits as three products, and
    1.05x faster on MiniLM's 576 x 384 -> 3 x 384); W4A8 runs the three."""
    mods = (sa.query, sa.key, sa.value)
    stacked = _stacked_qkv_weight(mods)
    if stacked is None:
        return [_amx_int8_product(ops, m, xq, xs, m.bias, 0, False).view(batch, seq, -1, sa.attention_head_size)
                for m in mods]
    packed, scale = stacked
    y = run_amx_int8(ops, xq, xs, packed, scale, _stacked_qkv_bias(mods), 0, False)  # (M, 3N); empty: no bias
    return y.view(batch, seq, 3, -1, sa.attention_head_size).unbind(2)


def _stacked_qkv_weight(mods) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The query, key and value W8A8 weights stacked as one (3N, K) weight in the fused kernels' layout, and their
    (3N,) float32 scales (each module's ``_w8a8_scale``, itself a kernel-cache entry), held in the query module's
    kernel cache; None unless all three are W8A8 with a bias each or none.

    It stays valid exactly as long as each module's own cached layouts would: the key and value modules each hold
    a token in their kernel cache, and the stacked weight is rebuilt when either token is not the one it was made
    with (a cleared cache: a loaded state dict, ``set_quantized``, a device move)."""
    if any(m.bits != 8 for m in mods) or len({m.bias is None for m in mods}) != 1:
        return None
    tokens = tuple(m._cache.setdefault(_QKV_TOKEN, object()) for m in mods[1:])
    entry = mods[0]._cache.get(_QKV_STACKED)
    if entry is None or any(a is not b for a, b in zip(entry[0], tokens)):
        packed = pack_amx_weight(torch.cat([m.qweight for m in mods]))  # (3N/16, K/64, 16, 64)
        entry = (tokens, (packed, torch.cat([_w8a8_scale(m).view(-1) for m in mods])))
        mods[0]._cache[_QKV_STACKED] = entry
    return entry[1]


def _stacked_qkv_bias(mods) -> torch.Tensor:
    """The query, key and value biases concatenated (3N,) for the stacked product, or an empty tensor where they have
    none. The modules' biases are read on every call, as the modules' own forwards do; the concatenation is kept in
    the query's kernel cache while the three are the same tensors at the same version (an in-place edit bumps it)."""
    biases = [m._buffers["bias"] for m in mods]
    if biases[0] is None:
        return _NO_BIAS
    if any(b.is_inference() for b in biases):  # no version counter to tell an edit by
        return torch.cat(biases)
    key = tuple((b, b._version) for b in biases)
    entry = mods[0]._cache.get(_QKV_BIAS)
    if entry is None or any(a is not b or u != v for (a, u), (b, v) in zip(entry[0], key)):
        entry = (key, torch.cat(biases))
        mods[0]._cache[_QKV_BIAS] = entry
    return entry[1]


_NO_BIAS = torch.empty(0)
# kernel-cache keys (the query's; the key's and value's token)
_QKV_STACKED, _QKV_BIAS, _QKV_TOKEN = "w8a8_qkv_stacked", "w8a8_qkv_bias", "w8a8_qkv_token"


def _intermediate_codes(ops, inter: QuantizedLinear, xq, xs) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token codes of GELU(intermediate(x)), all the output block's product reads. For W8A8 the kernel
    makes them without writing the float output (``run_amx_int8_codes``: on MiniLM that output is 3.5 MB a layer
    at batch 32); where a row is not finite it is run again with the output, which ``_codes`` then quantizes as
    the module path does. W4A8 runs its kernel with the output."""
    gelu = activation_code("gelu")
    if inter.bits == 8:
        codes, scale, finite = run_amx_int8_codes(ops, xq, xs, _amx_packed(inter), _w8a8_scale(inter).view(-1),
                                                  inter.bias, gelu)
        if finite:
            return codes, scale
    ffn = _amx_int8_product(ops, inter, xq, xs, inter.bias, gelu, True)
    return _codes(ffn[0], ffn)


def _residual_norm(ops, block: FusedResidualNorm, xq, xs, residual: torch.Tensor):
    """LayerNorm(dense(x) + residual) of a FusedResidualNorm block from its input's codes, with the output's codes:
    (out, codes, scale, finite). For W8A8 the kernel normalises each finished row block while it is in cache
    (``run_amx_int8_norm``); W4A8 runs the product, then the fused norm's own pass. Both give residual_layer_norm's
    bits."""
    dense, norm = block.dense, block.LayerNorm
    if dense.bits == 8:
        return run_amx_int8_norm(ops, xq, xs, _amx_packed(dense), _w8a8_scale(dense).view(-1), dense.bias, residual,
                                 norm.weight, norm.bias, norm.eps)
    h = _amx_int8_product(ops, dense, xq, xs, dense.bias, 0, False)  # (M, N)
    return ops.residual_layer_norm(h, residual, norm.weight, norm.bias, norm.eps, True)
