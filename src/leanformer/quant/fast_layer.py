"""``FastBertLayer``: transformers' ``BertLayer`` with a shorter call path for quantized CPU inference, swapped in
by ``use_fast_layers_`` once a model runs leanformer's short-sequence attention.

Why: once the products run on int8 kernels, the Python between them is a visible share of a forward. In MiniLM
(transformers 5.24, W8A8, 1 thread) one encoder layer took 0.89 ms at batch 1 (18 tokens) through transformers'
modules and 0.71 ms when the same children were called directly; at batch 32 7.6 against 7.4 ms (scratch,
200 interleaved calls). The shortcut below, which still goes through the attention registry's function and
every child module's call, made a whole batch-1 forward 1.09x faster (300 interleaved forwards) and changed
nothing measurable at batch 32. The stock path goes through ``BertAttention`` and ``BertSelfAttention`` (each behind a
keyword-renaming decorator), the attention registry, and ``apply_chunking_to_forward`` (which inspects the
feed-forward function's signature on every call).

The fast path makes the calls the stock ``BertLayer.forward`` makes, in the same order, on the same modules:
the query / key / value projections, leanformer's attention function (the one the registry would return for
``attention.ATTENTION_NAME``, so short attention or its SDPA fallback as before), the self-output block, the
intermediate and the output block. Only the two attention wrappers' own module calls and the chunking helper
are skipped, so outputs are bit-identical to the stock layer (tested with ``torch.equal``). Anything the
shortcut does not cover runs the stock forward: a decoder or cross-attention layer, a cache, encoder states,
feed-forward chunking, extra keyword arguments, the model off leanformer's attention, hooks on the skipped
modules (or global module hooks), another class standing in for the attention blocks, or
``set_policy(fast_layers=False)``.

Where every product of the layer runs on the fused int8 kernel (W8A8 / W4A8 with ``fuse=True``), the layer goes
one step further: ``int8_layer.run_int8_layer`` calls the kernels themselves, without the modules (bit-identical;
``set_policy(int8_layers=False)`` keeps the module calls).

Two more swaps ride along (each with its own conditions and bit-identical outputs): ``FastBertEncoder``, which runs
a W8A8 encoder's layers in one native call (``int8_encoder``; ``set_policy(int8_encoder=False)``), and
``FastBertEmbeddings`` (``fast_embeddings``), which sums the three 8-bit embedding lookups in one native pass.

The swap is a class change of the existing layer object (its children, parameters and state dict are
untouched), done only where transformers' ``BertLayer`` and ``BertSelfAttention`` have the signatures this was
written against; other versions keep their layers as they are.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bert.modeling_bert import (BertAttention, BertEmbeddings, BertEncoder, BertLayer,
                                                    BertSelfAttention)

from .attention import ATTENTION_NAME, _hf_attention
from .fast_embeddings import FastBertEmbeddings
from .int8_encoder import run_int8_encoder
from .int8_layer import _hooked, int8_layer_plan, run_int8_layer
from .kernels import get_policy

__all__ = ["FastBertLayer", "FastBertEncoder", "FastBertEmbeddings", "use_fast_layers_", "fast_layers_supported"]

_LAYER_PARAMS = ("self", "hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask", "cache",
                 "kwargs")
_SELF_ATTENTION_PARAMS = ("self", "hidden_states", "attention_mask", "cache", "kwargs")
_EMBEDDINGS_PARAMS = ("self", "input_ids", "token_type_ids", "position_ids", "inputs_embeds", "cache_length")
_ENCODER_PARAMS = ("self", "hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                   "cache", "use_cache", "kwargs")


def _params(fn) -> tuple:
    return tuple(inspect.signature(inspect.unwrap(fn)).parameters)


def fast_layers_supported() -> bool:
    """True when this transformers' BERT layer and self-attention have the call signatures the fast path copies."""
    return _params(BertLayer.forward) == _LAYER_PARAMS and _params(BertSelfAttention.forward) == _SELF_ATTENTION_PARAMS


def fast_encoder_supported() -> bool:
    """True when this transformers' BERT encoder has the call signature ``FastBertEncoder`` copies."""
    return fast_layers_supported() and _params(BertEncoder.forward) == _ENCODER_PARAMS


def fast_embeddings_supported() -> bool:
    """True when this transformers' BERT embeddings have the call signature ``FastBertEmbeddings`` copies."""
    return _params(BertEmbeddings.forward) == _EMBEDDINGS_PARAMS


def _global_hooks() -> bool:
    return bool(_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks)


class FastBertLayer(BertLayer):
    """A ``BertLayer`` whose forward skips transformers' wrapper modules where that changes nothing."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                cache=None, **kwargs) -> torch.Tensor:
        if not self._shortcut_applies(encoder_hidden_states, encoder_attention_mask, cache, kwargs):
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   cache=cache, **kwargs)
        plan = int8_layer_plan(self, hidden_states)
        if plan is not None:  # every product on the fused int8 kernel: one sequence of native calls
            return run_int8_layer(plan, hidden_states, attention_mask)
        sa = self.attention.self
        input_shape = hidden_states.shape[:-1]
        heads = (*input_shape, -1, sa.attention_head_size)
        q = sa.query(hidden_states).view(heads).transpose(1, 2)  # (B, H, S, D)
        k = sa.key(hidden_states).view(heads).transpose(1, 2)
        v = sa.value(hidden_states).view(heads).transpose(1, 2)
        context, _ = _hf_attention(sa, q, k, v, attention_mask, dropout=0.0 if not sa.training else sa.dropout.p,
                                   scaling=sa.scaling)  # (B, S, H, D)
        context = context.reshape(*input_shape, -1).contiguous()
        attention_output = self.attention.output(context, hidden_states)
        return self.output(self.intermediate(attention_output), attention_output)

    def _shortcut_applies(self, encoder_hidden_states, encoder_attention_mask, cache, kwargs: dict) -> bool:
        attention = self.attention
        sa = getattr(attention, "self", None)
        return (get_policy().fast_layers and encoder_hidden_states is None and encoder_attention_mask is None
                and cache is None and all(value is None or value is False for value in kwargs.values())
                and not self.is_decoder and self.chunk_size_feed_forward == 0
                and type(attention) is BertAttention and type(sa) is BertSelfAttention
                and not attention.is_cross_attention
                and getattr(sa.config, "_attn_implementation", None) == ATTENTION_NAME
                and not _hooked(attention) and not _hooked(sa) and not _global_hooks())


class FastBertEncoder(BertEncoder):
    """A ``BertEncoder`` that runs its layers in one native call (``int8_encoder.run_int8_encoder``) where every
    layer would run ``run_int8_layer`` on W8A8 weights; otherwise, or with anything beyond a plain encoder call
    (cache, cross-attention, extra keyword arguments, hooks on a layer), the stock loop over the layers."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                cache=None, use_cache: bool | None = None, **kwargs) -> BaseModelOutputWithPastAndCrossAttentions:
        if (encoder_hidden_states is None and encoder_attention_mask is None and cache is None and not use_cache
                and all(value is None or value is False for value in kwargs.values())):
            layers = self._modules["layer"]
            if all(type(layer) is FastBertLayer for layer in layers):
                out = run_int8_encoder(layers, hidden_states, attention_mask)
                if out is not None:
                    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out, cache=None)
        return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                               cache=cache, use_cache=use_cache, **kwargs)


def use_fast_layers_(model: nn.Module) -> list[str]:
    """Turn every ``BertLayer`` of ``model`` (exactly that class) into a ``FastBertLayer``, every ``BertEncoder``
    into a ``FastBertEncoder`` and every ``BertEmbeddings`` into a ``FastBertEmbeddings``, in place, when the model
    runs leanformer's short attention and transformers' signatures match; returns the layers' names."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != ATTENTION_NAME or not fast_layers_supported():
        return []
    names = []
    encoders, embeddings = fast_encoder_supported(), fast_embeddings_supported()
    for name, mod in model.named_modules():
        if type(mod) is BertEncoder and encoders:
            mod.__class__ = FastBertEncoder
        elif type(mod) is BertEmbeddings and embeddings:
            mod.__class__ = FastBertEmbeddings
        elif type(mod) is BertLayer:
            mod.__class__ = FastBertLayer
            names.append(name)
        elif type(mod) is FastBertLayer:
            names.append(name)
    return names
