"""Per-architecture specs: a short list of rules each, tried before the generic rules (PEFT-style)."""
from __future__ import annotations

import importlib

from torch import nn

from leanformer.patch.config import LeanConfig
from leanformer.patch.engine import Rule
from leanformer.patch.specs.generic import generic_rules

# HF ``config.model_type`` -> spec module under leanformer.patch.specs
SPECS = {"bert": "bert", "gpt2": "gpt2", "llama": "llama"}


def rules_for(model: nn.Module, config: LeanConfig) -> tuple[str, list[Rule]]:
    """(spec name, ordered rules) for ``model``: its architecture's rules, then the generic ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    rules: list[Rule] = []
    name = "generic"
    if model_type in SPECS:
        name = SPECS[model_type]
        rules += importlib.import_module(f"leanformer.patch.specs.{name}").rules()
    if name != "generic" or config.generic:  # named specs always use the by-type rules for their leaves
        rules += generic_rules()
    return name, rules
