"""Generic fallback: swap modules by type, for any model (named architectures put their rules first).

Linear layers (``nn.Linear``, transformers' ``Conv1D``), ``nn.LayerNorm``, Hugging Face RMSNorms with LLaMA
semantics, every GELU variant ``leanformer.layers.activation_kind`` recognises exactly (erf, tanh, python
tanh, fast, quick), SiLU and ``nn.Dropout``. Attention is architecture-specific and lives in the specs.
Rules marked ``optional`` are heuristics (matched by name/attributes): a module the lean layer refuses is
left alone and listed under ``skipped`` in the report, never swapped approximately.
"""
from __future__ import annotations

from torch import nn

from leanformer.layers import (LeanDropout, LeanGELU, LeanLayerNorm, LeanLinear, LeanRMSNorm, LeanSiLU,
                               activation_kind)
from leanformer.patch.engine import Rule, is_lean, is_type

try:
    from transformers.pytorch_utils import Conv1D
    LINEAR_TYPES: tuple[type, ...] = (nn.Linear, Conv1D)
except ImportError:  # pragma: no cover - transformers is optional for generic models
    LINEAR_TYPES = (nn.Linear,)


def _is_gelu(m: nn.Module) -> bool:
    return not is_lean(m) and activation_kind(m) not in (None, "silu")


def _is_silu(m: nn.Module) -> bool:
    return not is_lean(m) and activation_kind(m) == "silu"


def _is_hf_rmsnorm(m: nn.Module) -> bool:
    return not is_lean(m) and type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")


def rmsnorm(m, cfg):
    return LeanRMSNorm.from_module(m)


def generic_rules() -> list[Rule]:
    return [
        Rule("linear", is_type(*LINEAR_TYPES), lambda m, c: LeanLinear.from_module(m), lambda c: c.linear),
        Rule("norm", lambda m: type(m) is nn.LayerNorm,
             lambda m, c: LeanLayerNorm.from_module(m, approximate=c.approximate_layernorm_from_output),
             lambda c: c.norms),
        Rule("norm", _is_hf_rmsnorm, rmsnorm, lambda c: c.norms, optional=True),
        Rule("activation", _is_gelu,
             lambda m, c: LeanGELU.from_module(m, approximate_from_output=c.approximate_gelu_from_output),
             lambda c: c.activations),
        Rule("activation", _is_silu, lambda m, c: LeanSiLU.from_module(m), lambda c: c.activations),
        Rule("dropout", lambda m: type(m) is nn.Dropout, lambda m, c: LeanDropout.from_module(m),
             lambda c: c.dropout),
    ]
