"""GPT-2: lean self-attention (cross-attention stays stock); leaves (Conv1D, LayerNorm, tanh GELU, dropout) by type.

``LeanGPT2Attention.forward`` is transformers 5.x ``GPT2Attention.forward`` for self-attention with the
attention-interface call replaced by the lean kernel. ``reorder_and_upcast_attn`` models keep the stock module
(their fp32-upcast eager path is a numerics choice we do not reproduce).
"""
from __future__ import annotations

from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

from leanformer.patch.attention.hf import LeanAttentionMixin, lean_attention_builder
from leanformer.patch.engine import Rule, is_type


class LeanGPT2Attention(LeanAttentionMixin, GPT2Attention):
    def forward(self, hidden_states, past_key_values=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, output_attentions=False, **kwargs):
        if output_attentions or encoder_hidden_states is not None:
            return GPT2Attention.forward(self, hidden_states, past_key_values, attention_mask, encoder_hidden_states,
                                         encoder_attention_mask, output_attentions, **kwargs)
        q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)  # 3 x (B, S, H) views
        q = q.view(*q.shape[:-1], -1, self.head_dim).transpose(1, 2)  # (B, h, S, d)
        k = k.view(*k.shape[:-1], -1, self.head_dim).transpose(1, 2)
        v = v.view(*v.shape[:-1], -1, self.head_dim).transpose(1, 2)
        k, v = self._cache_update(past_key_values, k, v)
        out = self._lean_attend(q, k, v, attention_mask, dropout_p=self.attn_dropout.p if self.training else 0.0,
                                scaling=self.scaling)  # (B, S, h, d)
        out = self.c_proj(out.reshape(*out.shape[:-2], -1))
        return self.resid_dropout(out), None


def _plain_self_attention(m) -> bool:
    return is_type(GPT2Attention)(m) and not m.is_cross_attention and not m.reorder_and_upcast_attn


def rules() -> list[Rule]:
    return [Rule("attention", _plain_self_attention, lean_attention_builder(LeanGPT2Attention),
                 lambda c: c.attention != "off", descend=True, keep=("attn_dropout",))]
