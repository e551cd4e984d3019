"""A W8A8 BERT encoder's layers in one native call: the step after ``int8_layer``, for an encoder whose every layer
would take ``run_int8_layer``'s sequence of native calls with W8A8 weights.

Why: once the products run near the VNNI kernel's peak, the Python between them is what is left to cut. In a
1-thread batch-32 MiniLM W8A8 forward on the Zen 4 VM, the layers spent ~0.35 ms each outside the native ops
(plan checks, op wrappers, tensor views), although the same Python takes ~0.1 ms when timed alone: inside the model
each product has just pushed the interpreter's objects out of cache. At 2 threads the products halve and the Python
does not. ``csrc/int8_encoder.cpp`` makes ``run_int8_layer``'s calls for all the layers in C++, so a forward pays for
one plan check per layer and one call.

What it computes is what ``run_int8_layer`` computes layer after layer, bit for bit (tested with ``torch.equal``):
the same kernels with the same operands in the same order (the file's header lists them). It applies only where
each layer's own path would be ``run_int8_layer`` with W8A8 weights (``int8_layer_plan``, with the q/k/v weights
stacked) and with the short attention kernel, for a plain encoder call (no cache, cross-attention, extra outputs or
hooks on the layers), with all layers sharing the attention's head count and scale. Where a step meets a NaN or an
inf, the native call stops and the layers run their own path from the start (the same outputs). W4A8 layers keep
``run_int8_layer``. ``set_policy(int8_encoder=False)`` turns it off.
"""
from __future__ import annotations

import torch
from torch import nn

from .amx import amx_int8_available
from .attention import MAX_KEYS, kernel_mask
from .int8_layer import _hooked, _stacked_qkv_bias, _stacked_qkv_weight, int8_layer_plan
from .kernels import _amx_packed, _w8a8_scale, get_policy, native_ops_for

__all__ = ["int8_encoder_weights", "run_int8_encoder"]

_NO_TENSOR = torch.empty(0)


def _mask_operand(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask as ``short_attention`` hands it to its kernel (empty for none), or None where the short
    kernel would not take it (``attention.short_attention_applies``: SDPA would run the attention)."""
    if mask is not None and (mask.dtype not in (torch.bool, torch.float32) or mask.requires_grad
                             or mask.device.type != "cpu"):
        return None
    return kernel_mask(mask)


def _linear(mod) -> list[torch.Tensor]:
    """A W8A8 QuantizedLinear's packed weight, column scales and bias, as ``amx.run_amx_int8`` hands them over (the
    first two held in its kernel cache, the bias read per call)."""
    packed, scale = mod.kernel_cache(_OPERANDS, lambda: (_amx_packed(mod), _w8a8_scale(mod).view(-1)))
    bias = mod._buffers["bias"]
    return [packed, scale, _NO_TENSOR if bias is None else bias.contiguous()]


_OPERANDS = "w8a8_encoder_operands"  # kernel-cache key


def int8_encoder_weights(layers, hidden_states: torch.Tensor):
    """(weights, eps, heads, scaling) for ``int8_bert_encoder`` (16 tensors and two eps per layer, in the order of
    ``csrc/int8_encoder.cpp``), or None unless every layer would run ``run_int8_layer`` on W8A8 weights with the
    short attention kernel, and all share the attention's heads and scale. (Children and tensors are read from the
    modules' own dicts: nn.Module's attribute lookup costs ~1 us, ~40 of them per layer.)"""
    weights: list[torch.Tensor] = []
    eps: list[float] = []
    shape = None
    width = hidden_states.shape[-1]
    for layer in layers:
        if _hooked(layer) or not layer._shortcut_applies(None, None, None, {}):
            return None
        plan = int8_layer_plan(layer, hidden_states)
        if plan is None:
            return None
        sa, attended, out = plan.attention, plan.self_output, plan.output
        children = sa._modules
        mods = (children["query"], children["key"], children["value"])
        dense = (attended._modules["dense"], plan.intermediate, out._modules["dense"])
        if (any(m.bits != 8 for m in dense) or any(m.out_features != width for m in mods)
                or sa.__dict__.get("is_causal", False)):
            return None
        stacked = _stacked_qkv_weight(mods)  # None unless all three are W8A8
        if stacked is None:
            return None
        heads = (sa.__dict__["num_attention_heads"], sa.__dict__["scaling"])
        if shape is None:
            shape = heads
        elif shape != heads:
            return None
        norms = (attended._modules["LayerNorm"], out._modules["LayerNorm"])
        weights += [*stacked, _stacked_qkv_bias(mods),
                    *_linear(dense[0]), norms[0]._parameters["weight"], norms[0]._parameters["bias"],
                    *_linear(dense[1]),
                    *_linear(dense[2]), norms[1]._parameters["weight"], norms[1]._parameters["bias"]]
        eps += [float(norms[0].eps), float(norms[1].eps)]
    if shape is None:
        return None
    return weights, eps, shape[0], float(shape[1])


def run_int8_encoder(layers: nn.ModuleList, hidden_states: torch.Tensor,
                     attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The last layer's output for (B, S, H) ``hidden_states`` run through ``layers`` in one native call, or None
    where that call does not apply (see above) or stopped at a NaN or an inf: the caller then runs the layers."""
    if not get_policy().int8_encoder or hidden_states.dim() != 3 or hidden_states.shape[1] > MAX_KEYS:
        return None
    ops = native_ops_for(hidden_states)
    mask = _mask_operand(attention_mask)
    if ops is None or mask is None or not hasattr(ops, "int8_bert_encoder"):
        return None
    found = int8_encoder_weights(layers, hidden_states)
    if found is None:
        return None
    weights, eps, heads, scaling = found
    out, done = ops.int8_bert_encoder(hidden_states, mask, weights, eps, heads, scaling, amx_int8_available())
    return out if bool(done) else None
