"""leanformer.layers: drop-in nn.Modules that save only what backward needs (interface for ``patch/``).

Every lean module is built with ``Lean<X>.from_module(original)``, which SHARES the original parameter
objects (same ``nn.Parameter`` instances, same names, so ``state_dict`` keys and an optimizer built
before patching keep working) and copies the ``training`` flag. Forward signature and output equal the
original's (bit for bit in fp32 on CPU; see docs/lean_layers.md for the few last-ulp differences).
Unsupported modules raise ``TypeError`` naming the class.

=====================  ==========================================================  ========================
class                  from_module accepts                                          saves for backward
=====================  ==========================================================  ========================
LeanLinear             nn.Linear; transformers Conv1D (weight (in, out))           W + input, or the input's
                                                                                    recipe tensors (below)
LeanLayerNorm          nn.LayerNorm (``approximate=True``: Tempo from-output)      x, gamma, beta, mean, rstd
LeanRMSNorm            LlamaRMSNorm-style (weight, variance_epsilon)               x, weight, rstd
LeanGELU               nn.GELU, GELUActivation, NewGELUActivation, GELUTanh,       pre-activation only
                       PytorchGELUTanh, FastGELU, QuickGELU
                       (``approximate_from_output=True``: output + 1-bit mask)
LeanSiLU               nn.SiLU, SiLUActivation                                     pre-activation only
LeanDropout            nn.Dropout                                                  1-bit packed mask
LeanGatedMLP           LlamaMLP-style (gate_proj/up_proj/down_proj/act_fn)         g, u (+ input recipe)
=====================  ==========================================================  ========================

How the fusion works (no wrapper needed): a lean norm / activation / gated product attaches a
*recipe* to its output's autograd node (weak references to the tensors it already saved + a pure
rebuild function). ``LeanLinear`` receiving that output saves the recipe's tensors (same storages, so
counted once) instead of the output and rebuilds it bit-identically in backward. This crosses module
boundaries (BERT's output LayerNorm of layer i -> Q/K/V of layer i+1) and serves any number of
consumers (q/k/v, gate/up). It falls back to plain saving when the input has no live recipe: a view
or in-place edit of the output, the producer's saved tensors already freed, non-reentrant checkpointing,
or ``torch.compile`` (the compiler chooses what to save there). Only a *direct* consumer benefits: put
nothing (e.g. a dropout or ``.view``) between a lean norm/activation and its LeanLinear.

Functional forms live in ``leanformer.ops``; plain references for tests in ``leanformer.reference``.
"""
from __future__ import annotations

from .activation import LeanGELU, LeanSiLU, activation_kind
from .dropout import LeanDropout
from .linear import LeanLinear
from .mlp import LeanGatedMLP
from .norm import LeanLayerNorm, LeanRMSNorm

__all__ = ["LeanDropout", "LeanGELU", "LeanGatedMLP", "LeanLayerNorm", "LeanLinear", "LeanRMSNorm", "LeanSiLU",
           "activation_kind"]
