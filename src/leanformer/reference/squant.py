"""Reference SQuant rounding: the official per-kernel loop (clevercool/SQuant ``round_func``) in plain Python.

It works on Python lists, one kernel / channel at a time, as ``squant_function.py`` does. It is the
yardstick for ``leanformer.quant.squant.squant_round``. It breaks priority ties by position (a stable sort)
and keeps every quirk of the official code, so the two must agree exactly.
"""
from __future__ import annotations

import math

import torch

__all__ = ["squant_round_reference"]


def _round_half_even(v: float) -> float:
    return float(round(v))  # Python's round() is half-to-even, like torch.round


def _stage(st: dict, segments: list[list[int]], keep_one_candidate: bool) -> None:
    orders = []
    for seg in segments:  # sort every segment first (the official code sorts the whole tensor, then loops)
        up = sorted(seg, key=lambda i: -st["up_pri"][i])  # sorted() is stable: ties keep position order
        down = sorted(seg, key=lambda i: -st["down_pri"][i])
        orders.append((up, down))
    if keep_one_candidate:
        st["up_pri"] = [0.0] * len(st["up_pri"])
        st["down_pri"] = [0.0] * len(st["down_pri"])
    for seg, (up_order, down_order) in zip(segments, orders):
        total = sum(st["error"][i] for i in seg)
        if total < 0:  # flip up
            number, error, order = st["up_num"], st["up_err"], up_order
            pri, pri_other = st["up_pri"], st["down_pri"]
        else:  # flip down (also when total == 0, as the official code does)
            number, error, order = st["down_num"], st["down_err"], down_order
            pri, pri_other = st["down_pri"], st["up_pri"]
        mag = abs(total)
        topk = int(_round_half_even(mag))
        over = topk >= mag
        for i in order[:topk]:
            st["error"][i] = error[i]
            st["number"][i] = number[i]
        if over:
            c = order[topk - 1]  # topk == 0 -> order[-1], as Python indexing does in the official code
            pri_other[c] = abs(st["error"][c])
        else:
            c = order[topk]
            pri[c] = abs(st["error"][c])


def squant_round_reference(x: torch.Tensor, *, kernel_size: int | None, t_min: float, t_max: float,
                           mode: str = "squant") -> torch.Tensor:
    """Same contract as ``squant_round``: (N, K) real codes -> (N, K) float64 codes before the final clamp."""
    n, k = x.shape
    xs = [float(v) for v in x.double().flatten().tolist()]
    number = [_round_half_even(v) for v in xs]
    error = [q - v for q, v in zip(number, xs)]
    st = {"number": number, "error": error, "up_num": [], "up_err": [], "up_pri": [],
          "down_num": [], "down_err": [], "down_pri": []}
    for v, q, e in zip(xs, number, error):
        is_up = e < 0 and v < t_max
        is_down = e > 0 and v > t_min
        st["up_num"].append(q + 1 if is_up else q)
        st["up_err"].append(e + 1 if is_up else 0.0)
        st["up_pri"].append(abs(e) if is_up else 0.0)
        st["down_num"].append(q - 1 if is_down else q)
        st["down_err"].append(e - 1 if is_down else 0.0)
        st["down_pri"].append(abs(e) if is_down else 0.0)
    if mode in ("squant", "squant-k") and kernel_size is not None and kernel_size > 1:
        kernels = [list(range(s, s + kernel_size)) for s in range(0, n * k, kernel_size)]
        _stage(st, kernels, keep_one_candidate=True)
    if mode in ("squant", "squant-c"):
        rows = [list(range(r * k, (r + 1) * k)) for r in range(n)]
        _stage(st, rows, keep_one_candidate=False)
    assert all(math.isfinite(v) for v in st["number"])
    return torch.tensor(st["number"], dtype=torch.float64).view(n, k)
