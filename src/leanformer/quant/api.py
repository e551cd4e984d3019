"""``quantize_(model, config)``: swap float modules for quantized ones in place, with a report.

Modelled on torchao's ``quantize_(model, config, filter_fn)``: one handler per config type, registered in
``_HANDLERS``; a handler turns one float module into its quantized replacement. Departures: modules are
replaced (not tensor subclasses), so the model's state dict holds plain integer tensors; nothing matched,
an unsupported module, or a tied weight raise or are reported instead of passing silently.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from leanformer.config import BaseConfig

from .configs import (ANTConfig, EmbeddingConfig, MixedPrecisionConfig, SQuantConfig, W4A8Config, W8A8Config,
                      WeightOnlyConfig)
from .modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear
from .qweight import QuantizedWeight
from .rtn import check_weight, quantize_rtn

__all__ = ["quantize_", "quantize_module", "QuantReport", "LayerReport", "register_handler", "float_weight_bytes",
           "quantize_weight"]

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class LayerReport:
    name: str
    kind: str  # original module class
    bits: int
    group_size: int | None
    fmt: str
    bytes_before: int
    bytes_after: int


@dataclass
class QuantReport:
    layers: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    seconds: float = 0.0
    fused: int = 0  # feed-forward blocks whose GELU runs in the first GEMM's kernel (fusion.fuse_feed_forward_)
    fused_norms: int = 0  # output blocks whose residual add + LayerNorm run fused (fusion.fuse_residual_norms_)
    short_attention: bool = False  # the model now runs leanformer's short-sequence attention (attention.py)
    fast_layers: int = 0  # BERT layers on the shorter call path (fast_layer.py)

    @property
    def bytes_before(self) -> int:
        return sum(layer.bytes_before for layer in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(layer.bytes_after for layer in self.layers)

    def merge(self, other: "QuantReport") -> "QuantReport":
        return QuantReport(self.layers + other.layers, {**self.skipped, **other.skipped}, self.seconds + other.seconds,
                           self.fused + other.fused, self.fused_norms + other.fused_norms,
                           self.short_attention or other.short_attention, max(self.fast_layers, other.fast_layers))

    def summary(self) -> str:
        by_bits: dict[int, int] = {}
        for layer in self.layers:
            by_bits[layer.bits] = by_bits.get(layer.bits, 0) + 1
        mix = ", ".join(f"{n} x {b}-bit" for b, n in sorted(by_bits.items()))
        return (f"quantized {len(self.layers)} modules ({mix}): {self.bytes_before / 1e6:.2f} MB -> "
                f"{self.bytes_after / 1e6:.2f} MB in {self.seconds:.2f} s"
                + (f"; fused GELU into {self.fused} feed-forward blocks" if self.fused else "")
                + (f"; fused residual + LayerNorm in {self.fused_norms} blocks" if self.fused_norms else "")
                + ("; short-sequence attention" if self.short_attention else "")
                + (f"; {self.fast_layers} BERT layers on the fast call path" if self.fast_layers else "")
                + (f"; skipped {len(self.skipped)}" if self.skipped else ""))


def float_weight_bytes(module: nn.Module) -> int:
    w = module.weight
    n = w.numel() * w.element_size()
    bias = getattr(module, "bias", None)
    return n + (0 if bias is None else bias.numel() * bias.element_size())


def _packed_bytes(module: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


def _scale_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


# ----------------------------------------------------------------------------------- weight quantizers
def quantize_weight(weight: torch.Tensor, config: BaseConfig, importance: torch.Tensor | None = None) -> QuantizedWeight:
    """The QuantizedWeight a config produces for one weight tensor (no module swap)."""
    if isinstance(config, W4A8Config):  # the same 4-bit weights as weight-only int4
        config = config.weight_config()
    if isinstance(config, WeightOnlyConfig):
        return quantize_rtn(weight, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                            clip_search=config.clip_search, refine_steps=config.refine_steps,
                            scale_dtype=_scale_dtype(config.scale_dtype), importance=importance)
    if isinstance(config, W8A8Config):
        return quantize_rtn(weight, bits=8, group_size=None, symmetric=True, clip_search=config.clip_search,
                            scale_dtype=_scale_dtype(config.scale_dtype))
    if isinstance(config, EmbeddingConfig):
        return quantize_rtn(weight, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                            refine_steps=config.refine_steps, scale_dtype=_scale_dtype(config.scale_dtype))
    if isinstance(config, SQuantConfig):
        check_weight(weight, config.bits, config.group_size)
        from .squant import squant_quantize  # lazy: written in parallel (issue 5b)

        return squant_quantize(weight.detach(), bits=config.bits, group_size=config.group_size,
                               symmetric=config.symmetric)
    if isinstance(config, ANTConfig):
        check_weight(weight, config.bits, config.group_size)
        from .ant import ant_quantize  # lazy: written in parallel (issue 5b)

        return ant_quantize(weight.detach(), bits=config.bits, group_size=config.group_size,
                            granularity=config.granularity)
    raise TypeError(f"no weight quantizer for config type {type(config).__name__}")


def _linear_handler(module: nn.Module, config: BaseConfig, importance: torch.Tensor | None = None) -> nn.Module:
    qw = quantize_weight(module.weight, config, importance)
    if isinstance(module, nn.Conv2d):
        return QuantizedConv2d.from_float(module, qw)
    return QuantizedLinear.from_float(module, qw, act_bits=8 if isinstance(config, (W8A8Config, W4A8Config)) else None)


def _embedding_handler(module: nn.Module, config: BaseConfig) -> nn.Module:
    return QuantizedEmbedding.from_float(module, quantize_weight(module.weight, config))


# config type -> (module types it applies to, handler)
_HANDLERS: dict[type, tuple[tuple[type, ...], Callable[[nn.Module, BaseConfig], nn.Module]]] = {
    WeightOnlyConfig: ((nn.Linear, nn.Conv2d), _linear_handler),
    W8A8Config: ((nn.Linear,), _linear_handler),
    W4A8Config: ((nn.Linear,), _linear_handler),
    SQuantConfig: ((nn.Linear, nn.Conv2d), _linear_handler),
    ANTConfig: ((nn.Linear, nn.Conv2d), _linear_handler),
    EmbeddingConfig: ((nn.Embedding,), _embedding_handler),
}


def register_handler(config_type: type, module_types: tuple[type, ...], handler) -> None:
    """Teach ``quantize_`` a new config type (``handler(module, config) -> new module``)."""
    _HANDLERS[config_type] = (tuple(module_types), handler)


def quantize_module(module: nn.Module, config: BaseConfig) -> nn.Module:
    """Quantized replacement for one module; ``TypeError`` if the config does not apply to its type."""
    types, handler = _handler_for(config)
    if type(module) not in types:  # exact types: a subclass may override forward in ways we cannot honour
        raise TypeError(f"{type(config).__name__} cannot quantize a {type(module).__name__}; "
                        f"supported: {', '.join(t.__name__ for t in types)}")
    return handler(module, config)


def _handler_for(config: BaseConfig):
    if not isinstance(config, BaseConfig):
        raise TypeError(f"config must be a leanformer quantization config, got {type(config).__name__}")
    if type(config) not in _HANDLERS:
        raise TypeError(f"no quantization handler registered for {type(config).__name__}")
    return _HANDLERS[type(config)]


def _tied_weights(model: nn.Module) -> set[int]:
    """ids of weight tensors used by more than one module (e.g. a decoder tied to the word embeddings)."""
    seen: dict[int, int] = {}
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and mod._parameters.get("weight") is w:
            seen[id(w)] = seen.get(id(w), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def fuse_for_inference_(model: nn.Module, report: QuantReport, *, fuse: bool, short_attention: bool) -> None:
    """The model-level steps after quantizing its layers, recorded in ``report``: fused feed-forward blocks
    (``fusion.py``) and the short-sequence attention kernel (``attention.py``)."""
    if fuse:
        from .fusion import fuse_feed_forward_, fuse_residual_norms_

        report.fused = fuse_feed_forward_(model)
        report.fused_norms = fuse_residual_norms_(model)
    if short_attention:
        from .attention import use_short_attention_

        report.short_attention = use_short_attention_(model)
        if report.short_attention:
            from .fast_layer import use_fast_layers_

            report.fast_layers = len(use_fast_layers_(model))


@torch.no_grad()
def quantize_(model: nn.Module, config: BaseConfig, *, filter_fn: FilterFn | None = None,
              example_inputs=None) -> QuantReport:
    """Quantize ``model`` in place. ``filter_fn(module, name) -> bool`` narrows which modules are touched.
    ``example_inputs`` (a dict of model kwargs or a tensor) replaces the random token ids that
    ``act_weighting`` / mixed precision feed the model (still no data needed for ``transformers`` models).

    Raises ``ValueError`` when no module matched, ``TypeError`` for an unknown config or a bare module root.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_ expects an nn.Module, got {type(model).__name__}")
    if isinstance(config, MixedPrecisionConfig):
        from .sensitivity import quantize_mixed_

        return quantize_mixed_(model, config, filter_fn=filter_fn, example_inputs=example_inputs)
    types, handler = _handler_for(config)
    if type(model) in types:
        raise TypeError(f"quantize_ replaces submodules in place; wrap the bare {type(model).__name__} in a "
                        "container (e.g. nn.Sequential) or use quantize_module()")
    tied = _tied_weights(model)
    report, start = QuantReport(), time.perf_counter()
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) in types and (filter_fn is None or filter_fn(mod, name))]
    if not targets:
        raise ValueError(f"{type(config).__name__}: no module of type {', '.join(t.__name__ for t in types)} "
                         "matched (check filter_fn, or the model is already quantized)")
    moments = {}
    if getattr(config, "act_weighting", False):
        from .calib import input_moments

        moments = input_moments(model, [n for n, m in targets if type(m) is nn.Linear], example_inputs)
    swaps = []  # build every replacement first: an error on any layer leaves the model untouched
    for name, mod in targets:
        if id(mod.weight) in tied:
            report.skipped[name] = "weight tied to another module"
            continue
        swaps.append((name, mod, handler(mod, config, moments[name]) if name in moments else handler(mod, config)))
    for name, mod, new in swaps:
        model.set_submodule(name, new)
        report.layers.append(LayerReport(name, type(mod).__name__, new.bits, new.group_size, new.format,
                                         float_weight_bytes(mod), _packed_bytes(new)))
    if isinstance(config, (W8A8Config, W4A8Config, WeightOnlyConfig)):
        fuse_for_inference_(model, report, fuse=config.fuse, short_attention=config.short_attention)
    report.seconds = time.perf_counter() - start
    return report
