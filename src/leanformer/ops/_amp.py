"""Autocast bookkeeping for the lean autograd Functions, for any device type.

``torch.amp.custom_fwd/custom_bwd`` need the device type at decoration time; a Function used on CPU,
CUDA or XPU tensors cannot name one. We do what those decorators do, per call: capture the autocast
state of the input's device in forward, and re-enter it in backward only around *recomputation* of a
forward value (so the recomputed tensor is bit-identical to the one forward produced). The gradient
math itself runs with autocast off in the saved tensors' dtypes, as autograd runs stock backward ops.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AmpState:
    device_type: str
    enabled: bool
    dtype: torch.dtype

    @staticmethod
    def capture(t: torch.Tensor) -> "AmpState":
        dev = t.device.type
        if dev == "meta" or not torch.amp.is_autocast_available(dev):
            return AmpState(dev, False, t.dtype)
        return AmpState(dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    def lower_dtype(self, t: torch.Tensor) -> torch.dtype:
        """dtype a lower-precision autocast op (linear/mm/addmm) computes in for floating ``t``."""
        if self.enabled and t.is_floating_point() and t.dtype != torch.float64:
            return self.dtype
        return t.dtype

    def restore(self):
        """Context re-entering forward's autocast state (for bit-identical recomputation)."""
        if not torch.amp.is_autocast_available(self.device_type):
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def no_autocast(t: torch.Tensor):
    """Context with autocast off on ``t``'s device (explicit-dtype gradient math)."""
    dev = t.device.type
    if not torch.amp.is_autocast_available(dev):
        return contextlib.nullcontext()
    return torch.autocast(dev, enabled=False)

