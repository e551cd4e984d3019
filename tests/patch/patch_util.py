"""Tiny models and a stock-vs-lean runner shared by the patch tests (imported as ``patch_util``)."""
from __future__ import annotations

import copy

import torch

# 2 layers, small hidden; dropout left at the architectures' defaults (0.1 for BERT/GPT-2), LLaMA gets 0.1
# attention dropout and GQA (4 query heads over 2 key/value heads) so both paths are exercised.
TINY = {
    "bert": ("bert-base", dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=72,
                               vocab_size=97, max_position_embeddings=64)),
    "gpt2": ("gpt2", dict(n_embd=48, n_layer=2, n_head=4, vocab_size=97, n_positions=64,
                          bos_token_id=0, eos_token_id=0)),
    "llama": ("llama-small", dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=97, attention_dropout=0.1,
                                  max_position_embeddings=64)),
}


def tiny_model(arch: str, attn: str = "sdpa", **overrides):
    from leanformer.models import build_model

    name, kwargs = TINY[arch]
    model = build_model(name, attn_implementation=attn, **{**kwargs, **overrides})
    return model.train()


def make_batch(model, batch: int, seq: int, *, pad_last: int = 0, seed: int = 1) -> dict:
    """Token ids, labels and a padding mask (the last sequence loses ``pad_last`` trailing tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        mask[-1, seq - pad_last:] = 0
    out = {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}
    if model.config.model_type != "bert":
        out["use_cache"] = False
    return out


def run_step(model, batch: dict, *, seed: int = 7, autocast: bool = False):
    """One training forward/backward under a fixed seed: (logits, {param name: grad})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(a, b, tol):
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **tol, msg=lambda m, n=name: f"grad of {n}: {m}")


def stock_and_lean(arch, attn="sdpa", config=None, **overrides):
    """(stock model, patched deep copy, report)."""
    import leanformer

    stock = tiny_model(arch, attn, **overrides)
    lean = copy.deepcopy(stock)
    report = leanformer.patch_(lean, config)
    return stock, lean, report
