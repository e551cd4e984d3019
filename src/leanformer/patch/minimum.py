"""The exact minimum of bytes one Transformer layer must keep for backward, from its shapes, and a per-layer counter.

Definition (research note actmem.md, section 4): keep only each matmul input once, per-row statistics,
1-bit dropout masks, and recompute elementwise chains from what is stored (the GELU pre-activation, a norm's
input, a GLU's gate and up). Variant "eager" keeps the softmax output P plus a 1-bit mask for attention-prob
dropout (Tempo); variant "fused" keeps Q, K, V, O and a per-row logsumexp instead (flash-style).

Counted per layer: the layer input and everything derived inside the layer. Not counted: parameters and
tensors shared by all layers (the attention mask, RoPE cos/sin), which a whole-model figure counts once.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class LayerShape:
    family: str  # "bert" (post-LN), "gpt2" (pre-LN), "llama" (pre-RMSNorm, gated MLP)
    batch: int
    seq: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    attn_dropout: bool
    hidden_dropout: bool
    itemsize: int = 4

    @classmethod
    def from_config(cls, cfg, batch: int, seq: int, itemsize: int = 4) -> "LayerShape":
        family = cfg.model_type
        if family == "gpt2":
            inter = cfg.n_inner or 4 * cfg.n_embd
            return cls("gpt2", batch, seq, cfg.n_embd, inter, cfg.n_head, cfg.n_head,
                       cfg.attn_pdrop > 0, cfg.resid_pdrop > 0, itemsize)
        if family == "llama":
            return cls("llama", batch, seq, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                       cfg.num_key_value_heads, cfg.attention_dropout > 0, False, itemsize)
        if family == "bert":
            return cls("bert", batch, seq, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                       cfg.num_attention_heads, cfg.attention_probs_dropout_prob > 0,
                       cfg.hidden_dropout_prob > 0, itemsize)
        raise ValueError(f"no layer-minimum formula for model_type {family!r}")


def exact_minimum_bytes(s: LayerShape, variant: str) -> dict[str, float]:
    """Itemised minimum (bytes) for one layer; ``variant`` is "eager" (keeps P) or "fused" (flash-style)."""
    if variant not in ("eager", "fused"):
        raise ValueError(f"variant must be 'eager' or 'fused', got {variant!r}")
    n, e = s.batch * s.seq, s.itemsize
    head_dim = s.hidden // s.heads
    kv = s.kv_heads * head_dim
    items = {
        "layer input": n * s.hidden * e,
        "q, k, v, attention output": n * (2 * s.hidden + 2 * kv) * e,
        "second norm input": n * s.hidden * e,
        "MLP pre-activation(s)": n * s.intermediate * e * (2 if s.family == "llama" else 1),
        # LayerNorm: mean + rstd per row; RMSNorm: rstd per row (two norms per layer)
        "norm row statistics": 2 * n * e * (1 if s.family == "llama" else 2),
        "hidden dropout masks (1 bit)": 2 * -(-n * s.hidden // 8) if s.hidden_dropout else 0,
    }
    attn_rows = s.batch * s.heads * s.seq
    if variant == "eager":
        items["softmax P"] = attn_rows * s.seq * e
        items["attention dropout mask (1 bit)"] = attn_rows * -(-s.seq // 8) if s.attn_dropout else 0
    else:
        items["attention logsumexp"] = attn_rows * 4  # fp32 row statistic
    return items


def lean_layer_bytes(s: LayerShape, attention: str) -> dict[str, float]:
    """What leanformer's layer keeps, itemised: the minimum, plus the attention dropout mask in flash mode
    (kept at 1 bit per element so masks equal stock's under the same seed; the "fused" minimum assumes a
    mask regenerated from a seed)."""
    if attention == "tempo":
        return exact_minimum_bytes(s, "eager")
    if attention not in ("flash", "sdpa"):
        raise ValueError(f"attention must be 'flash', 'tempo' or 'sdpa', got {attention!r}")
    items = exact_minimum_bytes(s, "fused")
    if attention == "flash" and s.attn_dropout:
        items["attention dropout mask (1 bit)"] = s.batch * s.heads * s.seq * -(-s.seq // 8)
    return items


def saved_bytes_by_layer(model, layers, **batch) -> tuple[list[int], int]:
    """One forward of ``model(**batch)``: bytes saved for backward attributed to the layer whose forward first
    saved each storage (parameters excluded). Returns (bytes per layer, total including outside any layer).

    In steady state a middle layer's figure is the per-layer cost: its input was first saved by the layer
    before (as that layer's last norm input), and it pays for its own last norm input, the next layer's input.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    current = [-1]
    owner: dict[int, tuple[int, int]] = {}

    def pack(t):
        if t.device.type != "meta" and t.numel() > 0:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in params and ptr not in owner:
                owner[ptr] = (current[0], st.nbytes())
        return t

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        handles.append(layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, -1)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**batch)
    finally:
        for h in handles:
            h.remove()
    per_layer = [0] * len(layers)
    for idx, nbytes in owner.values():
        if idx >= 0:
            per_layer[idx] += nbytes
    del out
    return per_layer, sum(nb for _, nb in owner.values())


def decoder_layers(model):
    """The repeated Transformer layers of a BERT / GPT-2 / LLaMA model (bare or with a head)."""
    base = getattr(model, "base_model", model)
    for path in ("encoder.layer", "h", "layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return list(obj)
    raise ValueError(f"cannot find the layer stack of {type(model).__name__}")
