"""``fuse_feed_forward_``: run each quantized feed-forward block's GELU, and the preparation of the next layer's
input, inside the first GEMM's kernel.

In a BERT-style feed-forward block, ``intermediate.dense`` (K -> 4K) feeds an exact GELU, whose output feeds
``output.dense`` (4K -> K). Run module by module, the (M, 4K) float32 activation is written by the GEMM,
read and written again by the GELU, and read once more to prepare it for the second GEMM (per-token int8
codes for W8A8, a bf16 copy for weight-only layers): on MiniLM at batch 32 those passes took more time than
the int8 GEMM itself (docs/quant.md). After fusion:

* ``intermediate.dense`` applies the GELU in its kernel's epilogue (``activation="gelu"``), and its
  ``intermediate_act_fn`` becomes a ``FusedActivation`` (the identity), so the module tree says what runs;
* when the layer's ``output.dense`` is quantized the same way (W8A8 after W8A8, weight-only after
  weight-only), it also prepares that layer's input while each block is in cache (``prepare_output``) and
  offers it to ``prepare_shared``, which hands it to ``output.dense`` - only if that exact, unchanged tensor
  is what ``output.dense`` reads (identity and version checked), so a model that edits the activation in
  between still gets a correct preparation.

The prepared inputs are bit-identical to preparing the GELU output separately. The GELU is not bit-identical
to ``F.gelu``: the fused int8 kernels (AMX or AVX512-VNNI) and the AMX int4 kernels evaluate it as a piecewise
polynomial (``csrc/gelu_avx512.h``), torch's erf comes from an exp, so values differ by at most ``GELU_ABS_BOUND``
(tested); the other paths apply ``F.gelu`` after the product, so there fusing does not change the formula. Fusion is recorded in the checkpoint (module specs) and comes back at load.

Which blocks: a module with a ``dense`` ``QuantizedLinear`` (W8A8 or weight-only integer, no codebook) and an
``intermediate_act_fn`` that is the exact GELU, the forward of transformers' ``*Intermediate`` classes (BERT,
RoBERTa, ELECTRA, XLM-R, ...): ``act(dense(x))``. Their class names must end in ``Intermediate``; anything
else is left alone.

``fuse_residual_norms_`` does the same for the blocks after attention and after the feed-forward block,
``LayerNorm(dropout(dense(h)) + input)``: ``residual_norm.FusedResidualNorm`` runs the residual add, the
LayerNorm and (after W8A8 layers) the next layers' per-token quantization as one pass over each row.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .modules import FusedActivation, QuantizedLinear

__all__ = ["fuse_feed_forward_", "fuse_residual_norms_", "GELU_ABS_BOUND"]

GELU_ABS_BOUND = 2e-6  # |fused GELU - F.gelu| on float32 inputs (test_quant_fusion.py)


def _is_exact_gelu(act) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # transformers' GELUActivation calls F.gelu (erf) unless built with use_gelu_python; "gelu_new", "fast" and
    # the other GELUs are other classes (tanh forms)
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def _fusable(mod) -> bool:
    return isinstance(mod, QuantizedLinear) and mod.codebook is None and mod.activation is None


def _same_kind(producer: QuantizedLinear, consumer) -> bool:
    """True when ``consumer`` reads what ``producer``'s kernel can prepare: W8A8 -> W8A8 (int8 codes),
    weight-only -> weight-only (the bf16 copy), of the right width."""
    return (isinstance(consumer, QuantizedLinear) and consumer.in_features == producer.out_features
            and (consumer.act_bits == 8) == (producer.act_bits == 8))


def fuse_feed_forward_(model: nn.Module) -> int:
    """Fuse every eligible feed-forward block of ``model`` in place; returns how many were fused."""
    fused = 0
    modules = list(model.modules())  # listed first: the loop replaces submodules
    layers = {id(m.intermediate): m for m in modules if hasattr(m, "intermediate")}  # block -> its layer
    for block in modules:
        if not type(block).__name__.endswith("Intermediate"):
            continue
        dense, act = getattr(block, "dense", None), getattr(block, "intermediate_act_fn", None)
        if not (_fusable(dense) and _is_exact_gelu(act)):
            continue
        dense.activation = "gelu"
        # the layer's output.dense input, prepared only when it is of the kind this kernel prepares (else unused)
        dense.prepare_output = _same_kind(dense, getattr(getattr(layers.get(id(block)), "output", None), "dense", None))
        block.intermediate_act_fn = FusedActivation("gelu")
        fused += 1
    return fused


def _stock_output_forward():
    """The code object of transformers' ``BertSelfOutput.forward`` (BertOutput's has the same bytecode), or None
    without transformers."""
    try:
        from transformers.models.bert.modeling_bert import BertSelfOutput
    except ImportError:
        return None
    return BertSelfOutput.forward.__code__


def _is_stock_output_block(block: nn.Module, stock_code) -> bool:
    """``LayerNorm(dropout(dense(h)) + input)``: the class's forward compiles to BERT's bytecode, names included
    (RoBERTa, ELECTRA, XLM-R copy it), and the children are what it expects."""
    code = getattr(type(block).forward, "__code__", None)
    return (stock_code is not None and code is not None and code.co_code == stock_code.co_code
            and code.co_names == stock_code.co_names and isinstance(getattr(block, "dropout", None), nn.Dropout))


def fuse_residual_norms_(model: nn.Module) -> int:
    """Replace every BERT-style output block whose ``dense`` is quantized by a ``FusedResidualNorm`` (residual
    add, LayerNorm and, after W8A8 layers, the next layers' int8 codes in one pass), in place; returns how many."""
    from .residual_norm import FusedResidualNorm

    stock_code = _stock_output_forward()
    swaps = [(name, block) for name, block in model.named_modules()
             if isinstance(getattr(block, "dense", None), QuantizedLinear) and _is_stock_output_block(block, stock_code)
             and FusedResidualNorm.supports(getattr(block, "LayerNorm", None))]
    for name, block in swaps:
        fused = FusedResidualNorm(block.dense, block.LayerNorm, block.dropout, type(block).__name__,
                                  prepare_output=block.dense.act_bits == 8)
        model.set_submodule(name, fused)
    return len(swaps)
