"""The swap engine: walk a model, replace matching module instances, remember how to put them back.

Convention 6 (DESIGN.md): only module *instances* on the given model object change; no library global is
reassigned and no ``forward`` is rebound. A rule turns one module into a lean one that shares the original
parameter objects; each swap is recorded as (parent, attribute name, old module, new module) so that
``unpatch_`` restores the very same objects in reverse order.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from leanformer.patch.config import LeanConfig

STATE_ATTR = "_leanformer_swaps"


@dataclasses.dataclass(frozen=True)
class Rule:
    """``match(module)`` -> swap it with ``build(module, config)`` when ``enabled(config)``.

    ``descend``: also patch the children of the new module (attention modules keep HF's Linear children).
    ``keep``: child names never swapped under this module (e.g. an attention-prob dropout only read for its p).
    """

    technique: str
    match: Callable[[nn.Module], bool]
    build: Callable[[nn.Module, LeanConfig], nn.Module]
    enabled: Callable[[LeanConfig], bool]
    descend: bool = False
    keep: tuple[str, ...] = ()
    optional: bool = False  # a heuristic match: if the lean layer refuses the module (TypeError), skip it


@dataclasses.dataclass(frozen=True)
class Swap:
    path: str
    technique: str
    parent: nn.Module
    name: str
    old: nn.Module
    new: nn.Module


def is_type(*classes: type) -> Callable[[nn.Module], bool]:
    return lambda m: isinstance(m, classes) and not is_lean(m)


def is_lean(module: nn.Module) -> bool:
    return type(module).__module__.startswith("leanformer.")


def clone_as(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` instance with the same attributes, parameters and children as ``module`` (no __init__).

    Containers (``_modules``, ``_parameters``, hook dicts, ...) are copied shallowly, so swapping a child of the
    clone leaves ``module`` untouched, while the parameter objects themselves are shared.
    """
    if not isinstance(module, cls.__bases__):
        raise TypeError(f"cannot clone {type(module).__name__} as {cls.__name__}")
    new = cls.__new__(cls)
    new.__dict__.update({k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in module.__dict__.items()})
    return new


def apply_rules(model: nn.Module, rules: list[Rule], config: LeanConfig) -> tuple[list[Swap], list[tuple]]:
    """Returns (swaps, skipped) where skipped lists (path, type name, reason) of refused optional matches."""
    swaps: list[Swap] = []
    skipped: list[tuple] = []
    active = [r for r in rules if r.enabled(config)]
    _walk(model, "", active, config, swaps, skipped, keep=())
    return swaps, skipped


def _excluded(path: str, config: LeanConfig) -> bool:
    return any(path == p or path.startswith(p + ".") for p in config.exclude)


def _walk(parent: nn.Module, prefix: str, rules: list[Rule], config: LeanConfig, swaps: list[Swap],
          skipped: list[tuple], keep: tuple[str, ...]) -> None:
    for name, child in list(parent._modules.items()):
        if child is None or name in keep:
            continue
        path = f"{prefix}.{name}" if prefix else name
        if _excluded(path, config):
            continue
        rule = next((r for r in rules if r.match(child)), None)
        if rule is None:
            _walk(child, path, rules, config, swaps, skipped, keep=())
            continue
        try:
            new = rule.build(child, config)
        except TypeError as exc:
            if not rule.optional:
                raise
            skipped.append((path, type(child).__name__, str(exc)))
            _walk(child, path, rules, config, swaps, skipped, keep=())
            continue
        _check_same_parameters(path, child, new)
        parent._modules[name] = new
        swaps.append(Swap(path, rule.technique, parent, name, child, new))
        if rule.descend:
            _walk(new, path, rules, config, swaps, skipped, keep=rule.keep)


def _check_same_parameters(path: str, old: nn.Module, new: nn.Module) -> None:
    """The promise that an optimizer built before patching still works: same names, same objects."""
    before = dict(old.named_parameters())
    after = dict(new.named_parameters())
    if before.keys() != after.keys() or any(before[k] is not after[k] for k in before):
        raise RuntimeError(f"internal error: the lean module at {path!r} does not share the original parameters "
                           f"(before {sorted(before)}, after {sorted(after)})")


def undo(swaps: list[Swap]) -> None:
    for s in reversed(swaps):
        current = s.parent._modules.get(s.name)
        if current is not s.new:
            raise RuntimeError(f"cannot unpatch {s.path!r}: the module there changed after patch_ "
                               f"(expected {type(s.new).__name__}, found {type(current).__name__})")
    for s in reversed(swaps):
        s.parent._modules[s.name] = s.old


def check_dtypes(model: nn.Module, config: LeanConfig) -> None:
    allowed = {getattr(torch, d) for d in config.dtypes}
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.dtype not in allowed:
            raise TypeError(f"patch_: parameter {name!r} has dtype {p.dtype}; leanformer supports "
                            f"{', '.join(config.dtypes)} (LeanConfig.dtypes)")
