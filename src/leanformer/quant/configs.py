"""Quantization configs: frozen, validated, versioned dataclasses (``leanformer.config.BaseConfig``).

Each config type has a handler registered in ``api.py`` that turns one float module into a quantized one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from leanformer.config import BaseConfig

__all__ = ["WeightOnlyConfig", "W8A8Config", "W4A8Config", "EmbeddingConfig", "SQuantConfig", "ANTConfig",
           "MixedPrecisionConfig", "config_from_dict"]

_SCALE_DTYPES = ("float16", "bfloat16", "float32")


def _check_bits_group(cfg, allowed_bits=range(2, 9)) -> None:
    if not isinstance(cfg.bits, int) or isinstance(cfg.bits, bool) or cfg.bits not in allowed_bits:
        cfg._fail("bits", cfg.bits, f"must be one of {list(allowed_bits)}")
    gs = cfg.group_size
    if gs is not None and (not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0):
        cfg._fail("group_size", gs, "must be a positive int or None (per output channel)")


def _check_scale_refits(cfg) -> None:
    if cfg.scale_dtype not in _SCALE_DTYPES:
        cfg._fail("scale_dtype", cfg.scale_dtype, f"must be one of {_SCALE_DTYPES}")
    if not isinstance(cfg.refine_steps, int) or cfg.refine_steps < 0:
        cfg._fail("refine_steps", cfg.refine_steps, "must be an int >= 0")


def _check_flags(cfg) -> None:
    for name in ("fuse", "short_attention"):
        if not isinstance(getattr(cfg, name), bool):
            cfg._fail(name, getattr(cfg, name), "must be True or False")


@dataclasses.dataclass(frozen=True)
class WeightOnlyConfig(BaseConfig):
    """Weight-only integer quantization of Linear (and Conv2d) weights; activations stay float.

    bits 4 or 8 (2..8 accepted; <= 4 stored as nibbles). group_size None = per output channel.
    clip_search: data-free MSE search over clip ranges; refine_steps: least-squares refits (``rtn.py``).
    act_weighting: weight the error by each input feature's mean square, measured in one forward pass on
    random token ids (no data; ``calib.py``). Needs a model with ``config.vocab_size`` or ``example_inputs``.
    fuse: run each BERT-style feed-forward block's GELU inside the first GEMM's kernel, and each output block's
    residual add + LayerNorm as one pass (``fusion.py``). Off by default: on int4 MiniLM it gave no consistent
    gain here (1 thread, six interleaved A/Bs, fp32 speed-up fused vs unfused from 1.79 vs 1.92x to 3.09 vs
    2.82x; docs/quant.md), unlike W8A8, where it is on.
    short_attention: switch a transformers model on SDPA attention to leanformer's short-sequence attention
    kernel for float32 CPU inference (``attention.py``; exact attention, other calls keep SDPA).
    """

    bits: int = 4
    group_size: int | None = 64
    symmetric: bool = False
    clip_search: bool = True
    refine_steps: int = 3
    scale_dtype: str = "float16"
    act_weighting: bool = False
    fuse: bool = False
    short_attention: bool = True

    def _validate(self) -> None:
        _check_bits_group(self)
        _check_scale_refits(self)
        _check_flags(self)


@dataclasses.dataclass(frozen=True)
class W8A8Config(BaseConfig):
    """Dynamic W8A8: int8 per-channel weights, int8 per-token activations quantized at run time, an exact
    int8 x int8 -> int32 product (kernels.py picks AMX, oneDNN or ``torch._int_mm``). ``fuse``: run each
    BERT-style feed-forward block's GELU and its next quantization inside the first GEMM, and each output
    block's residual add + LayerNorm + the next quantization as one pass (fusion.py).
    ``short_attention``: as in ``WeightOnlyConfig``."""

    clip_search: bool = False
    scale_dtype: str = "float16"
    fuse: bool = True
    short_attention: bool = True

    def _validate(self) -> None:
        if self.scale_dtype not in _SCALE_DTYPES:
            self._fail("scale_dtype", self.scale_dtype, f"must be one of {_SCALE_DTYPES}")
        _check_flags(self)


@dataclasses.dataclass(frozen=True)
class W4A8Config(BaseConfig):
    """W4A8: 4-bit group-quantized weights (stored and saved as in ``WeightOnlyConfig(bits=4)``) with int8
    per-token activations quantized at run time; the product runs on W8A8's exact int8 paths, the codes
    requantized onto a per-channel int8 grid (unpacked per call on AMX CPUs; ``w4a8.py``). Faster than
    weight-only int4 on CPUs whose int8 products outrun their bf16 ones (AMX), at the cost of W8A8's activation
    rounding. The weight fields are ``WeightOnlyConfig``'s; ``group_size`` must be a multiple of 4 (32 by
    default: on MiniLM g64 loses too much once activations are int8 too, docs/quant.md). ``fuse`` and
    ``short_attention`` as in ``W8A8Config`` (both on)."""

    group_size: int | None = 32
    symmetric: bool = False
    clip_search: bool = True
    refine_steps: int = 3
    scale_dtype: str = "float16"
    act_weighting: bool = True
    fuse: bool = True
    short_attention: bool = True

    @property
    def bits(self) -> int:
        return 4

    def weight_config(self) -> "WeightOnlyConfig":
        """The weight-only config that quantizes the same weights."""
        return WeightOnlyConfig(bits=4, group_size=self.group_size, symmetric=self.symmetric,
                                clip_search=self.clip_search, refine_steps=self.refine_steps,
                                scale_dtype=self.scale_dtype, act_weighting=self.act_weighting)

    def _validate(self) -> None:
        _check_bits_group(self, allowed_bits=(4,))
        if self.group_size is not None and self.group_size % 4:
            self._fail("group_size", self.group_size, "must be a multiple of 4 (or None, per output channel)")
        _check_scale_refits(self)
        _check_flags(self)


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig(BaseConfig):
    """Quantize ``nn.Embedding`` tables per row (group_size None) or per group of a row; optional least-squares
    refits of (scale, zero) as in ``WeightOnlyConfig`` (no clip search: 30k rows make it slow)."""

    bits: int = 8
    group_size: int | None = None
    symmetric: bool = True
    scale_dtype: str = "float16"
    refine_steps: int = 0

    def _validate(self) -> None:
        _check_bits_group(self)
        _check_scale_refits(self)


@dataclasses.dataclass(frozen=True)
class SQuantConfig(BaseConfig):
    """SQuant (ICLR 2022) data-free flip rounding; implemented in ``squant.py``."""

    bits: int = 4
    group_size: int | None = 64
    symmetric: bool = True

    def _validate(self) -> None:
        _check_bits_group(self)


@dataclasses.dataclass(frozen=True)
class ANTConfig(BaseConfig):
    """ANT (MICRO 2022) adaptive numeric type (int / flint / power-of-two) per tensor, channel or group; ``ant.py``."""

    bits: int = 4
    group_size: int | None = 64
    granularity: str = "tensor"

    def _validate(self) -> None:
        _check_bits_group(self)
        if self.granularity not in ("tensor", "channel", "group"):
            self._fail("granularity", self.granularity, "must be 'tensor', 'channel' or 'group'")


@dataclasses.dataclass(frozen=True)
class MixedPrecisionConfig(BaseConfig):
    """Keep the most sensitive Linears at ``high`` precision, the rest at ``low``, under ``budget_mb`` of
    Linear weight storage (codes + scales + zeros, in MB = 1e6 bytes). Sensitivity is data-free
    (``sensitivity.py``)."""

    low: WeightOnlyConfig = WeightOnlyConfig(bits=4, group_size=64)
    high: WeightOnlyConfig = WeightOnlyConfig(bits=8, group_size=None, symmetric=True, clip_search=False,
                                              refine_steps=0)
    budget_mb: float = 8.5

    def _validate(self) -> None:
        for name in ("low", "high"):
            if not isinstance(getattr(self, name), WeightOnlyConfig):
                self._fail(name, getattr(self, name), "must be a WeightOnlyConfig")
        if not isinstance(self.budget_mb, (int, float)) or self.budget_mb <= 0:
            self._fail("budget_mb", self.budget_mb, "must be a positive number of megabytes")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MixedPrecisionConfig":
        data = dict(data)
        for name in ("low", "high"):
            if isinstance(data.get(name), dict):
                data[name] = WeightOnlyConfig.from_dict(data[name])
        return super().from_dict(data)


_ALL = {c.__name__: c for c in (WeightOnlyConfig, W8A8Config, W4A8Config, EmbeddingConfig, SQuantConfig, ANTConfig,
                                MixedPrecisionConfig)}


def config_from_dict(data: dict[str, Any]) -> BaseConfig:
    kind = data.get("type")
    if kind not in _ALL:
        raise ValueError(f"unknown quantization config type {kind!r}; known: {sorted(_ALL)}")
    return _ALL[kind].from_dict(data)
