"""LLaMA: lean attention (RoPE and GQA kept exact), gated MLP keeping only gate and up, RMSNorm; Linear by type.

``LeanLlamaAttention.forward`` is transformers 5.x ``LlamaAttention.forward`` with the attention-interface call
replaced by the lean kernel; GQA runs without ``repeat_kv`` copies.
"""
from __future__ import annotations

from transformers.models.llama import modeling_llama as hf

from leanformer.layers import LeanGatedMLP
from leanformer.patch.attention.hf import LeanAttentionMixin, lean_attention_builder
from leanformer.patch.engine import Rule, is_type
from leanformer.patch.specs.generic import rmsnorm


class LeanLlamaAttention(LeanAttentionMixin, hf.LlamaAttention):
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        if self._wants_stock(kwargs):
            return hf.LlamaAttention.forward(self, hidden_states, position_embeddings, attention_mask,
                                             past_key_values, **kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, h, S, d)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, h_kv, S, d)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = hf.apply_rotary_pos_emb(q, k, cos, sin)
        k, v = self._cache_update(past_key_values, k, v)
        out = self._lean_attend(q, k, v, attention_mask, scaling=self.scaling,
                                dropout_p=self.attention_dropout if self.training else 0.0)  # (B, S, h, d)
        return self.o_proj(out.reshape(*input_shape, -1)), None


def _gated_mlp(m, cfg):
    return LeanGatedMLP.from_module(m)


def rules() -> list[Rule]:
    return [
        Rule("attention", is_type(hf.LlamaAttention), lean_attention_builder(LeanLlamaAttention),
             lambda c: c.attention != "off", descend=True),
        Rule("gated_mlp", is_type(hf.LlamaMLP), _gated_mlp, lambda c: c.gated_mlp),
        Rule("norm", is_type(hf.LlamaRMSNorm), rmsnorm, lambda c: c.norms),
    ]
