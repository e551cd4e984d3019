"""Recompute recipes: how a lean producer's output can be rebuilt from tensors backward keeps anyway.

A lean norm / activation / gated product keeps only its *input* for its own backward. Its output ``y``
then feeds one or more projections, each of which would normally save ``y`` for its weight gradient.
Instead the producer attaches a :class:`Recipe` to its autograd node (``y.grad_fn``): weak references
to the tensors it saved, plus a pure function that rebuilds ``y`` bit-identically from them. A
:func:`find_recipe` call on ``y`` (done by ``LeanLinear`` and the gated product) returns the live
recipe, and the consumer saves the recipe's tensors (same storages: counted once) instead of ``y``.

Why weak references on the node: the recipe must never keep a tensor alive longer than the producer's
own saved variables do. After the producer's backward frees its saved tensors, or under
non-reentrant checkpointing (where saved tensors are not held), the references die and consumers fall
back to plain saving: never a wrong gradient, at worst a lost saving. Version counters are compared so
an in-place edit of ``y`` or of a recipe tensor also falls back (the producer's own backward then
raises autograd's usual in-place error).
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from ._amp import AmpState

_ATTR = "_leanformer_recipe"


@dataclass(frozen=True)
class Recipe:
    refs: tuple[weakref.ref, ...]          # the tensors rebuild() needs, weakly held
    versions: tuple[int, ...]              # their version counters at forward time
    rebuild: Callable[..., torch.Tensor]   # pure: rebuild(*tensors) -> y (no captured tensors)
    amp: AmpState                          # autocast state forward ran under
    out_version: int

    def tensors(self) -> tuple[torch.Tensor, ...] | None:
        out = tuple(r() for r in self.refs)
        if any(t is None for t in out):
            return None
        if tuple(t._version for t in out) != self.versions:
            return None
        return out

    def recompute(self, *tensors: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.amp.restore():
            return self.rebuild(*tensors)


def attach_recipe(ctx, y: torch.Tensor, tensors: tuple[torch.Tensor, ...], rebuild: Callable[..., torch.Tensor],
                  amp: AmpState) -> None:
    """Attach a recipe for output ``y`` to the producer's node; call from ``Function.forward`` (``ctx``
    becomes ``y.grad_fn``). No-op while compiling: the compiler decides what to save there."""
    if torch.compiler.is_compiling():
        return
    recipe = Recipe(tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors),
                    rebuild, amp, y._version)
    setattr(ctx, _ATTR, recipe)


COMPILE_WARNING = ("leanformer: under torch.compile the compiler's partitioner decides what is saved for backward; "
                   "the lean norm/activation -> projection fusion is not applied there (measured: the same bytes "
                   "as stock compiled). Run the lean layers eagerly, or compile only other parts, for the saving.")


_compile_warned = False


def _warn_compile_once() -> None:
    # Warning is a graph break for dynamo; the flag makes it happen once (one recompile), not per call.
    global _compile_warned
    if not _compile_warned:
        _compile_warned = True
        warnings.warn(COMPILE_WARNING, stacklevel=4)


_CHECKPOINT_PACK_HOOKS = ("_checkpoint_hook.", "_recomputation_hook.")


def _in_checkpoint() -> bool:
    """True inside a non-reentrant ``torch.utils.checkpoint`` region (its forward or its recomputation).

    There the recipe's weak references may be dead in the first forward (checkpoint does not hold saved
    tensors) but alive in the recomputation, so the saved set would differ between the two and checkpoint
    raises. Checkpointing already drops the activations, so plain saving costs nothing there. Detected by
    the innermost saved-tensors pack hook, which both checkpoint phases install (torch 2.13 names)."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if hooks is None:
        return False
    name = getattr(hooks[0], "__qualname__", "")
    return name.startswith(_CHECKPOINT_PACK_HOOKS)


def find_recipe(y: torch.Tensor) -> tuple[Recipe, tuple[torch.Tensor, ...]] | None:
    """The live recipe rebuilding ``y`` and its tensors, or None (then save ``y`` itself)."""
    if torch.compiler.is_compiling():
        _warn_compile_once()
        return None
    if not isinstance(y, torch.Tensor) or _in_checkpoint():
        return None
    node = y.grad_fn
    recipe = getattr(node, _ATTR, None) if node is not None else None
    if recipe is None or y._version != recipe.out_version:
        return None
    tensors = recipe.tensors()
    return None if tensors is None else (recipe, tensors)
