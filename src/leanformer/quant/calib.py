"""Synthetic-input statistics: what a quantizer may learn about a model without reading any data.

One forward pass on uniform random token ids (for a ``transformers`` model; or the caller's
``example_inputs``) records the mean square of every Linear's input per feature. Those second moments
weight the rounding error (``rtn.quantize_rtn(importance=...)``): minimising sum_k E[x_k^2] (w_k - q_k)^2
is the expected output error under independent inputs, the diagonal-Hessian view SQuant and GPTQ share.
Random tokens still pass through the model's LayerNorm gains, so the outlier features they create (the
main reason plain weight MSE misjudges a layer) show up without data. SQuant likewise uses random inputs
(``torch.rand``) for its activation ranges.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["synthetic_inputs", "input_moments", "run_model"]


def synthetic_inputs(model: nn.Module, batch: int = 8, seq: int = 32, seed: int = 0) -> dict:
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None)
    if not isinstance(vocab, int):
        raise ValueError(f"cannot make synthetic inputs for a {type(model).__name__} (no config.vocab_size); "
                         "pass example_inputs=")
    max_pos = getattr(cfg, "max_position_embeddings", None) or seq
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    return {"input_ids": torch.randint(0, vocab, (batch, min(seq, max_pos)), generator=gen).to(device)}


def run_model(model: nn.Module, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


@torch.no_grad()
def input_moments(model: nn.Module, names: list[str], example_inputs=None) -> dict[str, torch.Tensor]:
    """name -> (K,) mean of x_k^2 over all tokens reaching that Linear, from one synthetic forward."""
    inputs = example_inputs if example_inputs is not None else synthetic_inputs(model)
    moments: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            x = args[0].detach().float()
            moments[name] = x.reshape(-1, x.shape[-1]).pow(2).mean(0)  # (K,)
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return moments
