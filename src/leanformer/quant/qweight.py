"""``QuantizedWeight``: the one in-memory form every leanformer weight quantizer returns.

This is the contract between the quantizers (RTN / MSE clip search in ``rtn.py``, SQuant in ``squant.py``,
ANT / flint in ``ant.py``) and everything downstream (packing, kernels, modules, serialization).

Fields
------
codes     int8 or uint8, same shape as the weight, unpacked (one code per element):
            * linear int formats, symmetric (``zero is None``): signed int8 in [-2**(b-1), 2**(b-1)-1]
              (a quantizer may use the symmetric range [-(2**(b-1)-1), 2**(b-1)-1]; both are valid);
            * linear int formats, asymmetric: uint8 in [0, 2**b - 1];
            * codebook formats (``codebook`` set): uint8 indices in [0, 2**b - 1] into ``codebook``.
scale     fp16 or fp32, shape ``(N, G)`` with ``G = K // group_size`` (per output channel: ``(N, 1)``).
          For conv weights ``(O, I, kh, kw)`` grouping runs over the flattened ``I*kh*kw`` axis, so
          ``scale`` is ``(O, G)`` with ``G = (I*kh*kw) // group_size``.
zero      None (symmetric) or a tensor shaped like ``scale`` holding the zero point in code units
          (fp16/fp32 so a fractional zero from a clip search is representable; integer values are typical).
bits      2..8.
group_size  None = one group per output channel (the whole flattened row).
codebook  None for linear int formats; for non-uniform formats (ANT flint / power-of-two / any table) an
          fp32 table of code values, ``w = codebook[codes] * scale`` (``zero`` must be None), shaped
          ``(2**bits,)`` (one table), ``(N, 2**bits)`` (one per output row) or ``(N, G, 2**bits)`` (one per
          group), the last two for ANT's per-channel / per-group type choice.
format    free-form name of the numeric type for reports ("int", "flint", "pot", "float", ...).

Dequantization (``dequantize``):
    linear, symmetric   w = codes * scale
    linear, asymmetric  w = (codes - zero) * scale
    codebook            w = codebook[codes] * scale
with ``scale`` / ``zero`` repeated ``group_size`` times along the flattened input axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["QuantizedWeight", "lookup"]


def lookup(codebook: torch.Tensor, codes: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Codebook values for (N, K) index codes -> (N, G, gs); codebook (C,), (N, C) or (N, G, C)."""
    idx = codes.reshape(n, groups, -1).long()  # (N, G, gs)
    if codebook.dim() == 1:
        return codebook[idx]
    table = codebook.reshape(n, -1, codebook.shape[-1]).expand(n, groups, codebook.shape[-1])  # (N, G, C)
    return torch.gather(table, -1, idx)


@dataclass
class QuantizedWeight:
    codes: torch.Tensor  # (N, K) or (O, I, kh, kw); int8 (signed linear) or uint8 (asym / codebook index)
    scale: torch.Tensor  # (N, G) fp16/fp32
    zero: torch.Tensor | None  # (N, G) in code units, or None (symmetric / codebook)
    bits: int
    group_size: int | None  # None = per output channel
    codebook: torch.Tensor | None = None  # (2**bits,) fp32 values, or None for linear int codes
    format: str = "int"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def in_features(self) -> int:
        """Size of the flattened grouping axis (K for Linear, I*kh*kw for conv)."""
        return int(self.codes[0].numel()) if self.codes.dim() > 1 else int(self.codes.numel())

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def validate(self) -> None:
        """Raise ``ValueError`` / ``TypeError`` naming the inconsistent field."""
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"QuantizedWeight.bits must be an int in 2..8, got {self.bits!r}")
        if self.codes.dtype not in (torch.int8, torch.uint8):
            raise TypeError(f"QuantizedWeight.codes must be int8 or uint8, got {self.codes.dtype}")
        if self.codes.dim() < 2:
            raise ValueError(f"QuantizedWeight.codes must be at least 2-D (N, K), got shape {tuple(self.codes.shape)}")
        n, k = self.codes.shape[0], self.in_features
        gs = self.group_size
        if gs is not None and (not isinstance(gs, int) or gs <= 0 or k % gs):
            raise ValueError(f"QuantizedWeight.group_size={gs!r} must be a positive divisor of in_features={k}")
        groups = 1 if gs is None else k // gs
        if self.scale.shape != (n, groups):
            raise ValueError(f"QuantizedWeight.scale must have shape {(n, groups)}, got {tuple(self.scale.shape)}")
        if not self.scale.is_floating_point():
            raise TypeError(f"QuantizedWeight.scale must be floating point, got {self.scale.dtype}")
        if self.zero is not None and self.zero.shape != self.scale.shape:
            raise ValueError(f"QuantizedWeight.zero must have shape {tuple(self.scale.shape)}, got {tuple(self.zero.shape)}")
        if self.codebook is not None:
            c = 2 ** self.bits
            if tuple(self.codebook.shape) not in ((c,), (n, c), (n, groups, c)):
                raise ValueError(f"QuantizedWeight.codebook must have shape ({c},), ({n}, {c}) or ({n}, {groups}, {c}), "
                                 f"got {tuple(self.codebook.shape)}")
            if self.zero is not None:
                raise ValueError("QuantizedWeight with a codebook must have zero=None")
            if self.codes.dtype != torch.uint8:
                raise TypeError("QuantizedWeight codebook indices must be uint8")

    # ------------------------------------------------------------------ math
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight these codes stand for, shaped like ``codes``."""
        shape = self.codes.shape
        n, k = shape[0], self.in_features
        codes = self.codes.reshape(n, k)
        gs = k if self.group_size is None else self.group_size
        if self.codebook is not None:
            values = lookup(self.codebook.float(), codes, n, k // gs)  # (N, G, gs)
        else:
            values = codes.float().view(n, k // gs, gs)  # (N, G, gs)
        if self.zero is not None:
            values = values - self.zero.float().unsqueeze(-1)
        w = values * self.scale.float().unsqueeze(-1)  # (N, G, gs)
        return w.reshape(shape).to(dtype)

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(self.codes.to(device), self.scale.to(device), move(self.zero), self.bits,
                               self.group_size, move(self.codebook), self.format)

    def nbytes(self) -> int:
        """Bytes of the packed form: ``bits`` per code (4-bit packs two per byte) plus scale/zero/codebook."""
        codes = (self.codes.numel() * (4 if self.bits <= 4 else 8) + 7) // 8
        extra = self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            extra += self.zero.numel() * self.zero.element_size()
        if self.codebook is not None:
            extra += self.codebook.numel() * self.codebook.element_size()
        return codes + extra
