"""Generic fallback: swap modules by type, for any model (named architectures put their rules first).

Linear layers (``nn.Linear``, transformers' ``Conv1D``), LayerNorm, RMSNorm, GELU variants (matched to their
exact formula: erf vs tanh), SiLU and dropout. Attention is architecture-specific and lives in the specs.
"""
from __future__ import annotations

from torch import nn

from leanformer.patch.engine import Rule, is_type


def _hf_classes(*names: str) -> tuple[type, ...]:
    """transformers classes by name, or () when transformers is not installed."""
    try:
        from transformers import activations, pytorch_utils
    except ImportError:  # pragma: no cover - transformers is an optional dependency
        return ()
    found = []
    for name in names:
        cls = getattr(activations, name, None) or getattr(pytorch_utils, name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


# erf GELU and its tanh approximation; both map to LeanGELU, which keeps the variant of the module it replaces.
# QuickGELU (x * sigmoid(1.702 x)) and clipped GELUs are different functions and are left alone.
GELU_TYPES = (nn.GELU, *_hf_classes("GELUActivation", "NewGELUActivation", "GELUTanh", "FastGELUActivation"))
SILU_TYPES = (nn.SiLU, *_hf_classes("SiLUActivation"))
LINEAR_TYPES = (nn.Linear, *_hf_classes("Conv1D"))
RMSNORM_TYPES = (nn.RMSNorm,)


def _linear(m, cfg):
    from leanformer.layers import LeanLinear
    return LeanLinear.from_module(m)


def _layernorm(m, cfg):
    from leanformer.layers import LeanLayerNorm
    return LeanLayerNorm.from_module(m, approximate=cfg.approximate_layernorm_from_output)


def rmsnorm(m, cfg):
    from leanformer.layers import LeanRMSNorm
    return LeanRMSNorm.from_module(m)


def _gelu(m, cfg):
    from leanformer.layers import LeanGELU
    return LeanGELU.from_module(m, approximate_from_output=cfg.approximate_gelu_from_output)


def _silu(m, cfg):
    from leanformer.layers import LeanSiLU
    return LeanSiLU.from_module(m)


def _dropout(m, cfg):
    from leanformer.layers import LeanDropout
    return LeanDropout.from_module(m)


def generic_rules() -> list[Rule]:
    return [
        Rule("linear", is_type(*LINEAR_TYPES), _linear, lambda c: c.linear),
        Rule("norm", is_type(nn.LayerNorm), _layernorm, lambda c: c.norms),
        Rule("norm", is_type(*RMSNORM_TYPES), rmsnorm, lambda c: c.norms),
        Rule("activation", is_type(*GELU_TYPES), _gelu, lambda c: c.activations),
        Rule("activation", is_type(*SILU_TYPES), _silu, lambda c: c.activations),
        Rule("dropout", is_type(nn.Dropout), _dropout, lambda c: c.dropout),
    ]
