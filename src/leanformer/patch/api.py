"""``patch_`` / ``unpatch_``: swap memory-lean modules into a model in place, and back.

See docs/patch.md. Per-architecture knowledge lives in ``leanformer.patch.specs``; the mechanics in ``engine``.
"""
from __future__ import annotations

import collections
import dataclasses

from torch import nn

from leanformer.patch import engine
from leanformer.patch.config import LeanConfig
from leanformer.patch.specs import rules_for


@dataclasses.dataclass(frozen=True)
class SwapRecord:
    path: str
    old_type: str
    new_type: str
    technique: str


@dataclasses.dataclass(frozen=True)
class PatchReport:
    """Every module ``patch_`` swapped. ``print(report)`` gives a table; ``len(report)`` the count."""

    model_type: str
    spec: str
    swaps: tuple[SwapRecord, ...]
    skipped: tuple[tuple[str, str, str], ...] = ()  # (path, type, why) of heuristic matches left stock

    def __len__(self) -> int:
        return len(self.swaps)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(s.technique for s in self.swaps))

    def __str__(self) -> str:
        width = max([len(s.path) for s in self.swaps] + [4])
        lines = [f"leanformer.patch_: {len(self.swaps)} modules swapped in {self.model_type} (spec: {self.spec})",
                 f"{'path':<{width}}  {'technique':<10}  old -> new"]
        lines += [f"{s.path:<{width}}  {s.technique:<10}  {s.old_type} -> {s.new_type}" for s in self.swaps]
        lines.append("by technique: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items())))
        lines += [f"skipped {path} ({kind}): {why}" for path, kind, why in self.skipped]
        return "\n".join(lines)


def is_patched(model: nn.Module) -> bool:
    return bool(getattr(model, engine.STATE_ATTR, None)) or any(engine.is_lean(m) for m in model.modules())


def patch_(model: nn.Module, config: LeanConfig | None = None) -> PatchReport:
    """Swap memory-lean modules into ``model`` in place; returns the report of every swap.

    Raises ``TypeError`` for a non-module or an unsupported parameter dtype, ``ValueError`` if the model is
    already patched or nothing matched.
    """
    config = LeanConfig() if config is None else config
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_ expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, LeanConfig):
        raise TypeError(f"config must be a LeanConfig, got {type(config).__name__}")
    if is_patched(model):
        raise ValueError("patch_: this model is already patched by leanformer; call leanformer.unpatch_(model) first")
    engine.check_dtypes(model, config)
    spec_name, rules = rules_for(model, config)
    swaps, skipped = engine.apply_rules(model, rules, config)
    if not swaps:
        raise ValueError(f"patch_: nothing to swap in {type(model).__name__} (spec {spec_name!r}, config "
                         f"{config.to_json()}); no module matched any enabled rule")
    object.__setattr__(model, engine.STATE_ATTR, swaps)  # plain attribute: never in state_dict
    records = tuple(SwapRecord(s.path, _qualname(s.old), _qualname(s.new), s.technique) for s in swaps)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return PatchReport(str(model_type), spec_name, records, tuple(skipped))


def unpatch_(model: nn.Module) -> nn.Module:
    """Put back every original module ``patch_`` replaced (same objects, so state and outputs are identical)."""
    swaps = getattr(model, engine.STATE_ATTR, None)
    if not swaps:
        raise ValueError("unpatch_: this model was not patched by leanformer.patch_ (nothing to restore)")
    engine.undo(swaps)
    object.__delattr__(model, engine.STATE_ATTR)
    return model


def _qualname(module: nn.Module) -> str:
    return type(module).__name__
