"""The recipe table: which lean pieces a training run plugs in, each by one line.

A recipe names the pieces (lean layers via ``patch_``, an optimizer); the pieces themselves live in their
own packages (``leanformer.patch``, ``leanformer.optim``, ``leanformer.profile``) and are imported lazily,
here and only here. A piece that is not importable falls back to its stock counterpart with a one-line
warning, so the loop runs whatever subset of the library is installed.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Recipe:
    name: str
    patch: bool  # swap in the lean layers with leanformer.patch_
    optimizer: str  # default optimizer (a key of OPTIMIZERS)
    attn_implementation: str = "sdpa"  # Hugging Face's default attention


@dataclass(frozen=True)
class OptimizerEntry:
    module: str
    attr: str
    lr: float  # default learning rate (DESIGN.md: lr 3e-3 beat 1e-2 for APOLLO on a 4-layer LLaMA)
    fallback: str | None  # used, with a warning, when the module/attr is not importable


# One line per piece. The stock recipe is Hugging Face's model as built (SDPA attention) with AdamW.
RECIPES: dict[str, Recipe] = {
    "lean": Recipe("lean", patch=True, optimizer="apollo-mini"),
    "stock": Recipe("stock", patch=False, optimizer="adamw"),
}
OPTIMIZERS: dict[str, OptimizerEntry] = {
    "apollo-mini": OptimizerEntry("leanformer.optim", "APOLLOMini", lr=3e-3, fallback="adamw"),
    "apollo": OptimizerEntry("leanformer.optim", "APOLLO", lr=3e-3, fallback="adamw"),
    "adamw": OptimizerEntry("torch.optim", "AdamW", lr=1e-3, fallback=None),
}
PIECES: dict[str, tuple[str, str]] = {  # piece -> (module, attribute), imported on first use
    "patch_": ("leanformer", "patch_"),
    "LeanConfig": ("leanformer", "LeanConfig"),
    "measure_step": ("leanformer.profile", "measure_step"),
}

_warned: set[str] = set()
WARN: Callable[[str], None] = lambda msg: print(f"leanformer: warning: {msg}", file=sys.stderr)  # noqa: E731


def warn_once(msg: str) -> None:
    """One line per distinct message; the loop silences it on ranks other than 0 by replacing WARN."""
    if msg not in _warned:
        _warned.add(msg)
        WARN(msg)


def load_piece(module: str, attr: str) -> Any | None:
    """``module.attr`` or None when that piece is not there (yet): missing module or missing name."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def piece(name: str) -> Any | None:
    return load_piece(*PIECES[name])


def resolve_optimizer(name: str) -> tuple[str, type]:
    """(name actually used, optimizer class), following fallbacks with a warning."""
    entry = OPTIMIZERS[name]
    cls = load_piece(entry.module, entry.attr)
    if cls is not None:
        return name, cls
    if entry.fallback is None:
        raise ImportError(f"optimizer {name!r} needs {entry.module}.{entry.attr}, which is not importable")
    warn_once(f"{entry.module}.{entry.attr} is not available; optimizer {name!r} falls back to {entry.fallback!r}")
    return resolve_optimizer(entry.fallback)


def _lean_groups(model, params: list) -> list | None:
    """APOLLO-Mini's recommended grouping (``leanformer.optim.lean_param_groups``: embeddings and LM head on
    8-bit AdamW, every other matrix rank 1). bench_optim measured it 0.16 nats better than putting the
    embeddings on the rank-1 path too, at 1.5% of AdamW's state. None when not applicable."""
    groups_fn = load_piece("leanformer.optim", "lean_param_groups")
    if model is None or groups_fn is None:
        return None
    try:
        groups = groups_fn(model)
    except ValueError:  # no embedding to single out: plain routing
        return None
    trainable = {id(p) for p in params}
    groups = [{**g, "params": [p for p in g["params"] if id(p) in trainable]} for g in groups]
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, params, *, lr: float | None, weight_decay: float = 0.0, model=None):
    """Build the named optimizer over ``params`` (grouped by ``model`` where the optimizer has a recommended
    grouping); returns (optimizer, name used, lr used)."""
    used, cls = resolve_optimizer(name)
    lr = OPTIMIZERS[used].lr if lr is None else lr
    kwargs: dict[str, Any] = {"lr": lr}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    params = [p for p in params if p.requires_grad]
    if used == "adamw":
        kwargs.setdefault("weight_decay", 0.0)  # torch's default 1e-2 would differ from the other optimizers
    if used == "apollo":  # rank 64 at most (the paper's small-model setting), never above a matrix side
        kwargs["rank"] = min([64] + [min(p.shape[0], p[0].numel()) for p in params if p.dim() >= 2])
    if used == "apollo-mini":
        params = _lean_groups(model, params) or params
    return cls(params, **kwargs), used, lr


def apply_recipe_(model, recipe: Recipe) -> dict[str, Any]:
    """Swap in the recipe's lean layers, in place. Returns a small summary for logs and checkpoints."""
    if not recipe.patch:
        return {"patched": False}
    patch_, lean_config = piece("patch_"), piece("LeanConfig")
    if patch_ is None or lean_config is None:
        warn_once("leanformer.patch_ is not available; the lean recipe trains with stock layers")
        return {"patched": False, "reason": "patch_ not available"}
    try:
        report = patch_(model, lean_config())
    except ImportError as exc:  # a piece still being written: the caller rebuilds an unpatched model
        warn_once(f"leanformer.patch_ failed ({exc}); the lean recipe trains with stock layers")
        return {"patched": False, "reason": str(exc), "rebuild": True}
    return {"patched": True, "report": _report_summary(report)}


def _report_summary(report: Any) -> Any:
    """A JSON-friendly view of a PatchReport: swaps per technique when it has them."""
    counts = getattr(report, "counts", None)
    counts = counts() if callable(counts) else counts
    if isinstance(counts, dict):
        return {str(k): int(v) for k, v in counts.items()}
    for attr in ("to_dict", "summary"):
        fn = getattr(report, attr, None)
        if callable(fn):
            try:
                return fn()
            except TypeError:
                pass
    return str(report)
