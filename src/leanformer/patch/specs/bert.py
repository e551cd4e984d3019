"""BERT family (BERT, MiniLM, ...): lean self-attention; every leaf (Linear, LayerNorm, GELU, dropout) by type.

``LeanBertSelfAttention.forward`` is transformers 5.x ``BertSelfAttention.forward`` with the attention-interface
call replaced by the lean kernel. The attention-probability dropout child is kept as is (only its ``p`` is read).
"""
from __future__ import annotations

from transformers.models.bert.modeling_bert import BertSelfAttention

from leanformer.patch.attention.hf import LeanAttentionMixin, lean_attention_builder
from leanformer.patch.engine import Rule, is_type


class LeanBertSelfAttention(LeanAttentionMixin, BertSelfAttention):
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        if self._wants_stock(kwargs):
            return BertSelfAttention.forward(self, hidden_states, attention_mask, past_key_values, **kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        q = self.query(hidden_states).view(*hidden_shape).transpose(1, 2)  # (B, h, S, d)
        k = self.key(hidden_states).view(*hidden_shape).transpose(1, 2)
        v = self.value(hidden_states).view(*hidden_shape).transpose(1, 2)
        k, v = self._cache_update(past_key_values, k, v)
        out = self._lean_attend(q, k, v, attention_mask, dropout_p=self.dropout.p if self.training else 0.0,
                                scaling=self.scaling)  # (B, S, h, d)
        return out.reshape(*input_shape, -1), None


def rules() -> list[Rule]:
    return [Rule("attention", is_type(BertSelfAttention), lean_attention_builder(LeanBertSelfAttention),
                 lambda c: c.attention != "off", descend=True, keep=("dropout",))]
