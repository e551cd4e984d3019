"""``FastBertEmbeddings``: transformers' ``BertEmbeddings`` with its three 8-bit lookups and their sums in one native
pass (``csrc/embedding_rows.cpp``'s ``embedding_sum``), swapped in by ``fast_layer.use_fast_layers_``.

Why: with the encoder in one native call (``int8_encoder``), the embeddings were the largest piece of Python left
in a quantized MiniLM forward: three module calls, each with its own output, and two sums over (B, S, H), ~0.26 ms
at batch 32 against ~0.1 ms for one pass that reads each token's three rows and writes their sum once (Zen 4 VM,
1 thread, warm).

What it computes is what the stock forward computes, bit for bit (tested with ``torch.equal``): each table's row
dequantized as ``QuantizedEmbedding`` does, (word + token type) + position in float32 in that order, then the
same ``F.layer_norm`` call ``nn.LayerNorm`` makes; the default position and token type ids are the stock forward's.
It applies where all three tables are ``QuantizedEmbedding`` on the native 8-bit gather with float32 outputs, the
input is ``input_ids``, the LayerNorm is ``nn.LayerNorm``, dropout is off (eval mode) and none of the submodules is
hooked; anything else (``inputs_embeds``, 4-bit tables, training, ``set_policy(fast_layers=False)``) runs the stock
forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertEmbeddings

from .int8_layer import _hooked
from .kernels import get_policy
from .modules import QuantizedEmbedding

__all__ = ["FastBertEmbeddings"]

_TABLES = ("word_embeddings", "token_type_embeddings", "position_embeddings")  # the stock sum's order


class FastBertEmbeddings(BertEmbeddings):
    """A ``BertEmbeddings`` whose 8-bit lookups and sums run as one native pass where that changes nothing."""

    def forward(self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                cache_length: int = 0) -> torch.Tensor:
        ops = self._native_ops(input_ids, inputs_embeds)
        if ops is None:
            return super().forward(input_ids, token_type_ids, position_ids, inputs_embeds, cache_length)
        batch, seq = input_ids.shape
        if position_ids is None:
            position_ids = self._buffers["position_ids"][:, cache_length:cache_length + seq]  # (1, S)
        if token_type_ids is None:  # the token type buffer's entries at the positions (zeros), as the stock forward
            buffered = self._buffers.get("token_type_ids")
            token_type_ids = (torch.zeros_like(input_ids) if buffered is None else
                              torch.gather(buffered.expand(position_ids.shape[0], -1), 1, position_ids))
        if token_type_ids.dtype != torch.int64 or position_ids.dtype != torch.int64:  # the gather takes int64 ids
            return super().forward(input_ids, token_type_ids, position_ids, inputs_embeds, cache_length)
        ids = [t.expand(batch, seq).reshape(-1).contiguous() for t in (input_ids, token_type_ids, position_ids)]
        tables = [self._modules[name] for name in _TABLES]
        operands = [t.kernel_cache("embedding_rows", t._float_tables) for t in tables]
        x = ops.embedding_sum([t.qweight for t in tables], [s for s, _ in operands], [z for _, z in operands], ids)
        norm = self._modules["LayerNorm"]
        return F.layer_norm(x.view(batch, seq, -1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _native_ops(self, input_ids, inputs_embeds):
        """The native ops where the one-pass sum gives the stock forward's bits, else None."""
        if inputs_embeds is not None or input_ids is None or input_ids.dim() != 2 or not get_policy().fast_layers:
            return None
        parts = self._modules
        norm, dropout = parts["LayerNorm"], parts["dropout"]
        if (type(norm) is not nn.LayerNorm or (dropout.training and dropout.p > 0) or _hooked(self) or _hooked(norm)
                or _hooked(dropout)):
            return None
        ops = None
        for name in _TABLES:
            table = parts[name]
            if type(table) is not QuantizedEmbedding or table.out_dtype != torch.float32 or _hooked(table):
                return None
            ops = table._native_ops(input_ids)
            if ops is None:
                return None
        return ops
