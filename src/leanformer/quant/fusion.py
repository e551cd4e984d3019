"""``fuse_w8a8_``: run each W8A8 feed-forward block's GELU and next-layer quantization inside the int8 kernel.

In a BERT-style feed-forward block, ``intermediate.dense`` (K -> 4K) feeds an exact GELU, whose output feeds
``output.dense`` (4K -> K). Run module by module, the (M, 4K) float32 activation is written by the GEMM,
read and written again by the GELU, and read once more to quantize it per token for the second GEMM: on
MiniLM at batch 32 those passes took more time than the int8 GEMM itself (docs/quant.md). After fusion:

* ``intermediate.dense`` applies the GELU in its kernel's epilogue (``activation="gelu"``), and its
  ``intermediate_act_fn`` becomes a ``FusedActivation`` (the identity), so the module tree says what runs;
* when the layer's ``output.dense`` is W8A8 too, it also quantizes its output per token while each block is
  in cache (``quantize_output``) and offers the codes to ``prepare_shared``, which hands them to
  ``output.dense`` - only if that exact, unchanged tensor is what ``output.dense`` reads (identity and
  version checked), so a model that edits the activation in between still gets correct codes.

The codes are bit-identical to quantizing the GELU output separately. The GELU is not bit-identical to
``F.gelu``: the kernel's exp differs from Sleef's, so values differ by at most ``GELU_ABS_BOUND`` (tested);
kernels other than the AMX one apply ``F.gelu`` after the product, so fusing never changes which formula
a CPU without AMX runs. Fusion is recorded in the checkpoint (module specs) and comes back at load.

Which blocks: a module with a ``dense`` W8A8 ``QuantizedLinear`` and an ``intermediate_act_fn`` that is the
exact GELU, the forward of transformers' ``*Intermediate`` classes (BERT, RoBERTa, ELECTRA, XLM-R, ...):
``act(dense(x))``. Their class names must end in ``Intermediate``; anything else is left alone.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .modules import FusedActivation, QuantizedLinear

__all__ = ["fuse_w8a8_", "GELU_ABS_BOUND"]

GELU_ABS_BOUND = 2e-6  # |fused GELU - F.gelu| on float32 inputs, measured max 1.4e-6 (test_quant_fusion.py)


def _is_exact_gelu(act) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # transformers' GELUActivation calls F.gelu (erf) unless built with use_gelu_python; "gelu_new", "fast" and
    # the other GELUs are other classes (tanh forms)
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def _w8a8(mod) -> bool:
    return isinstance(mod, QuantizedLinear) and mod.act_bits == 8 and mod.activation is None


def fuse_w8a8_(model: nn.Module) -> int:
    """Fuse every eligible feed-forward block of ``model`` in place; returns how many were fused."""
    fused = 0
    modules = list(model.modules())  # listed first: the loop replaces submodules
    layers = {id(m.intermediate): m for m in modules if hasattr(m, "intermediate")}  # block -> its layer
    for block in modules:
        if not type(block).__name__.endswith("Intermediate"):
            continue
        dense, act = getattr(block, "dense", None), getattr(block, "intermediate_act_fn", None)
        if not (_w8a8(dense) and _is_exact_gelu(act)):
            continue
        dense.activation = "gelu"
        # codes for the layer's output.dense, when that is a W8A8 layer reading this width (else they'd go unused)
        consumer = getattr(getattr(layers.get(id(block)), "output", None), "dense", None)
        dense.quantize_output = (isinstance(consumer, QuantizedLinear) and consumer.act_bits == 8
                                 and consumer.in_features == dense.out_features)
        block.intermediate_act_fn = FusedActivation("gelu")
        fused += 1
    return fused
