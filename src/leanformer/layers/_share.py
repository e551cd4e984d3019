"""Helpers for ``from_module`` constructors: share (never copy) parameters, check types by name."""
from __future__ import annotations

import torch
from torch import nn


def share_params(dst: nn.Module, src: nn.Module, names: tuple[str, ...]) -> None:
    """Register ``src``'s parameter objects on ``dst`` under the same names (None stays None)."""
    for name in names:
        p = getattr(src, name, None)
        if p is not None and not isinstance(p, nn.Parameter):
            raise TypeError(f"{type(src).__name__}.{name} is a {type(p).__name__}, expected nn.Parameter or None")
        dst.register_parameter(name, p)
    dst.train(src.training)


def type_name(m: object) -> str:
    """'module.Class' of ``m``'s type (lets us recognise transformers classes without importing it)."""
    t = type(m)
    return f"{t.__module__}.{t.__qualname__}"


def reject(cls: type, m: object, expected: str) -> None:
    raise TypeError(f"{cls.__name__}.from_module: unsupported module {type_name(m)}; expected {expected}")


def probe(m: nn.Module, kind: str, ref) -> None:
    """Check bitwise on a probe grid that ``m`` computes exactly ``ref`` (guards against a changed class)."""
    x = torch.linspace(-8.0, 8.0, 513)
    with torch.no_grad():
        got, want = m(x), ref(x)
    if not torch.equal(got, want):
        raise TypeError(f"{type_name(m)} does not compute the '{kind}' formula leanformer expects "
                        f"(max diff {(got - want).abs().max().item():.3g}); refusing to swap it")
