"""SQuant: data-free rounding by the element / kernel / channel "CASE" flips (Guo et al., ICLR 2022).

Source: clevercool/SQuant (``quant_modules.py`` ``adaptive_round`` and ``_init_quant_para``,
``squant_function.py`` and ``squant-kernel/quant_kernel.cu`` ``round_func``). We re-derived it from those
files and vectorised it over all kernels / channels at once. ``leanformer.reference.squant`` is the plain
per-kernel loop that this module is tested against.

Algorithm (on ``x = w / scale``, real-valued codes):

* **E** (element): RTN, ``q = round(x)``, ``err = q - x``.
  - Up candidates have ``err < 0`` and ``x < t_max``; their flip is ``q + 1``, with priority ``|err|``.
  - Down candidates have ``err > 0`` and ``x > t_min``; their flip is ``q - 1``, with priority ``|err|``.
* **K** (kernel; only when a kernel has more than one element):
  - For each kernel, ``S = sum(err)``. Flip *up* if ``S < 0``, otherwise *down*.
  - Flip the ``round(|S|)`` candidates of that direction with the largest priority.
  - Then every priority is cleared except one per kernel:
    - if the flips overshot (``round(|S|) >= |S|``), the last flipped element, as a flip-*back* candidate
      of the opposite direction;
    - otherwise, the next unflipped candidate of the same direction.
* **C** (channel): the same top-k flip per output row, over the candidates left by K (or over every
  element when K did not run).

What it guarantees (tested):
- after K, every kernel has ``|sum(q - x)| <= 0.5``;
- after C, every channel has ``|sum(q - x)| <= 0.5``, and every kernel ``< 1`` (C flips at most one element per kernel);
- every code is ``floor(x)`` or ``ceil(x)`` (clamped to the code range).

How the official code behaves, and we keep:
- Ties in ``round`` go to even (``torch.round``).
- ``S == 0`` flips *down*.
- With ``k = 0`` and ``|S| == 0``, the flip-back slot is the lowest-priority element (Python's ``order[-1]``).
- Flipping an element that is not a candidate in that direction resets it to its RTN value.

Departures:
- **Sorting.** Priority ties are broken by position, with a stable sort. The official ``torch.sort`` is unstable.
- **Kernel and channel.** The official code does per-channel scales only. Here a Linear weight's *kernel* is
  ``kernel_size`` consecutive inputs: by default its group when ``group_size`` is set, otherwise none (the
  official Linear behaviour, which runs only the C stage). A conv kernel is its ``kh*kw`` window. The
  *channel* is the whole output row, as in the official code. With groups, the C stage therefore balances
  code-unit errors across groups with different scales.
- **Scales.**
  - ``symmetric=True`` (default) uses a max-abs scale per channel or group: ``scale = max|w| / (2**(b-1)-1)``.
  - ``symmetric=False`` is the official scale: asymmetric min/max with an integer zero point.
  - Both keep the official flip range ``[-2**(b-1), 2**(b-1)-1]``, or ``[0, 2**b-1]`` asymmetric.
  - The scale is rounded to ``scale_dtype`` *before* coding, so the stored triple is what was optimised.
"""
from __future__ import annotations

import torch

from .qweight import QuantizedWeight
from .rtn import check_weight

__all__ = ["squant_quantize", "squant_round", "squant_scale", "MODES"]

MODES = ("squant", "squant-e", "squant-k", "squant-c")  # the official code's mode names (E+K+C, E, E+K, E+C)


def squant_scale(w: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype):
    """Scale (and zero) per group for ``w`` (N, G, gs) fp32 -> ((N, G, 1) scale, (N, G, 1) zero or None)."""
    if symmetric:
        scale = w.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    else:  # the official per-channel asymmetric min/max (ZeroQ's asymmetric_linear_quantization_params)
        scale = (w.amax(-1, keepdim=True) - w.amin(-1, keepdim=True)) / (2 ** bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: any scale codes it
    if scale_dtype != torch.float32:
        finfo = torch.finfo(scale_dtype)
        if float(scale.max()) > finfo.max:
            raise ValueError(f"weights too large for {scale_dtype} scales; pass scale_dtype=torch.float32")
        scale = scale.clamp_min(finfo.tiny)
    scale = scale.to(scale_dtype).float()
    zero = None if symmetric else -torch.round(w.amin(-1, keepdim=True) / scale)  # integer zero point
    return scale, zero


class _State:
    """Per-element bookkeeping of ``adaptive_round`` on an (N, K) float64 layout; stages use (R, L) views."""

    def __init__(self, x: torch.Tensor, t_min: float, t_max: float):
        self.rtn = torch.round(x)  # (N, K)
        self.rtn_error = self.rtn - x
        self.up_ok = (self.rtn_error < 0) & (x < t_max)  # may round up instead
        self.down_ok = (self.rtn_error > 0) & (x > t_min)  # may round down instead
        self.number = self.rtn
        self.error = self.rtn_error
        magnitude = self.rtn_error.abs()
        self.up_priority = magnitude * self.up_ok  # mask products: exact, and far faster than torch.where on CPU
        self.down_priority = magnitude * self.down_ok

    def flip_stage(self, seg: int, *, keep_one_candidate: bool) -> None:
        """One SQuant stage over consecutive segments of ``seg`` elements (kernels, or whole rows)."""
        view = lambda t: t.view(-1, seg)  # noqa: E731  (R, L) segments
        number, error = view(self.number), view(self.error)
        up_pri, down_pri = view(self.up_priority), view(self.down_priority)
        total = error.sum(-1)  # (R,) accumulated rounding error per segment
        go_up = (total < 0)[:, None]  # (R, 1)
        # Only the needed direction's order is used (the official code sorts both and uses one).
        priority = up_pri * go_up + down_pri * ~go_up  # (R, L) the needed direction's priorities
        order = torch.sort(priority, dim=-1, descending=True, stable=True).indices
        if keep_one_candidate:  # the K stage hands exactly one candidate per kernel to the C stage
            up_pri.zero_()
            down_pri.zero_()
        mag = total.abs()
        topk = torch.round(mag)  # (R,) flips needed (round half to even, like the official code)
        over = topk >= mag  # the flips overshoot (or exactly cancel) the accumulated error
        rank = torch.arange(seg, device=total.device).expand_as(order)
        flip = torch.zeros_like(order, dtype=torch.bool).scatter_(1, order, rank < topk[:, None])
        # A flip to a non-candidate of that direction resets the element to RTN with error 0 (official).
        ok = (view(self.up_ok) & go_up) | (view(self.down_ok) & ~go_up)  # (R, L)
        step = go_up.to(number.dtype) * 2 - 1  # (R, 1): +1 up, -1 down
        rtn, rtn_error = view(self.rtn), view(self.rtn_error)
        flip_ok = flip & ok
        # Integer-valued codes: the arithmetic blend is exact. Errors: masks times values, also exact.
        number = number + flip * (rtn - number) + flip_ok * step
        error = error * ~flip + (rtn_error + step) * flip_ok
        self.number, self.error = number.view(self.rtn.shape), error.view(self.rtn.shape)
        # The one candidate this segment leaves for the next stage (the official idx_c).
        pos = torch.where(over, topk - 1, topk).long()  # (R,)
        pos = torch.where(pos < 0, pos + seg, pos).clamp_max(seg - 1)  # order[-1] when k=0 and S=0, as in Python
        idx = order.gather(1, pos[:, None])  # (R, 1)
        value = error.gather(1, idx).abs()  # (R, 1)
        to_up = go_up ^ over[:, None]  # overshoot: a flip-back candidate in the opposite direction
        up_pri.scatter_(1, idx, torch.where(to_up, value, up_pri.gather(1, idx)))
        down_pri.scatter_(1, idx, torch.where(to_up, down_pri.gather(1, idx), value))


def squant_round(x: torch.Tensor, *, kernel_size: int | None, t_min: float, t_max: float,
                 mode: str = "squant") -> torch.Tensor:
    """SQuant rounding of real-valued codes ``x`` (N, K) -> float codes (N, K), before the final clamp.

    ``kernel_size``: length of the consecutive row segments forming a kernel (must divide K); None or 1
    = no kernel stage. ``mode``: "squant" (E+K+C), "squant-e" (RTN), "squant-k" (E+K), "squant-c" (E+C).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if x.dim() != 2:
        raise ValueError(f"squant_round expects (N, K) codes, got shape {tuple(x.shape)}")
    n, k = x.shape
    if kernel_size is not None and (kernel_size <= 0 or k % kernel_size):
        raise ValueError(f"kernel_size={kernel_size} must divide the row length {k}")
    state = _State(x.double().contiguous(), t_min, t_max)
    run_k = mode in ("squant", "squant-k") and kernel_size is not None and kernel_size > 1
    if run_k:
        state.flip_stage(kernel_size, keep_one_candidate=True)
    if mode in ("squant", "squant-c"):
        state.flip_stage(k, keep_one_candidate=False)
    return state.number


def squant_quantize(weight: torch.Tensor, *, bits: int, group_size: int | None = None, symmetric: bool = True,
                    kernel_size: int | None = None, mode: str = "squant",
                    scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """SQuant-quantize a Linear (N, K) or conv (O, I, kh, kw) weight; codes keep the weight's shape.

    ``kernel_size`` (Linear only) overrides the kernel segment length (default: ``group_size``, or no
    kernel stage per channel). Conv kernels are always ``kh*kw``, and ``group_size`` must be a multiple of it.
    """
    check_weight(weight, bits, group_size)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scale_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"scale_dtype must be float16, bfloat16 or float32, got {scale_dtype}")
    n = weight.shape[0]
    k = weight[0].numel()
    if weight.dim() > 2:
        if kernel_size is not None:
            raise ValueError("kernel_size applies to Linear weights only; a conv kernel is its kh*kw window")
        kernel_size = weight[0, 0].numel()
        if group_size is not None and group_size % kernel_size:
            raise ValueError(f"group_size={group_size} must be a multiple of the conv kernel size "
                             f"{kernel_size} (kh*kw) so that no kernel straddles two scales")
    else:
        if kernel_size is None:
            kernel_size = group_size
        elif kernel_size <= 0 or k % kernel_size:
            raise ValueError(f"kernel_size={kernel_size} must be a positive divisor of in_features={k}")
    gs = k if group_size is None else group_size
    w = weight.detach().reshape(n, k // gs, gs).float()  # (N, G, gs)
    scale, zero = squant_scale(w, bits, symmetric, scale_dtype)  # (N, G, 1)
    half = 2 ** (bits - 1)
    if symmetric:
        x, t_min, t_max = w / scale, -half, half - 1
    else:  # unsigned codes: the official signed range shifted by 2**(b-1)
        x, t_min, t_max = w / scale + zero, 0, 2 * half - 1
    q = squant_round(x.reshape(n, k), kernel_size=kernel_size, t_min=t_min, t_max=t_max, mode=mode)
    q = q.clamp(t_min, t_max).reshape(weight.shape)
    codes = q.to(torch.int8 if symmetric else torch.uint8)
    zero_out = None if zero is None else zero.reshape(n, -1).to(scale_dtype)
    return QuantizedWeight(codes, scale.reshape(n, -1).to(scale_dtype), zero_out, bits, group_size, None, "int")
