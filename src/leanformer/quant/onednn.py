"""int8 x int8 GEMM through oneDNN with a weight packed once: the fast product behind W8A8 on x86 CPUs.

``torch._int_mm`` on CPU calls oneDNN's plain ``gemm`` API (``ONEDNN_VERBOSE=1`` shows ``gemm_api``), which
lays the weight out again on every call and, on the Sapphire Rapids machine this was measured on, does not
reach the AMX tiles. ``torch.ops.onednn.qlinear_pointwise`` on a weight packed once by ``torch.ops.onednn.qlinear_prepack``
runs oneDNN's brgemm matmul (AMX or AVX512-VNNI) instead: 1.3-4x faster on MiniLM's shapes at 576 rows
(``benchmarks/bench_quant.py``'s kernel sweep). It is PyTorch's own x86 int8 linear (the one Inductor's x86
quantization lowers to); it takes one activation scale per tensor, so we call it with unit scales and zero
points and apply the per-token and per-channel scales afterwards, exactly as after ``torch._int_mm``.

With unit scales the op returns float32(x_int8 @ w_int8.T): the int32 accumulation is exact and the single
cast to float32 rounds to nearest even, as ``torch._int_mm(...).float()`` does, so W8A8 outputs are
bit-identical whichever product runs. That is checked, not assumed: the first use runs a probe on this CPU
(random codes, the extreme codes -128/127, sums past 2**24, 1, 17 and 40 rows) against ``torch._int_mm``, and the
path is used only if every value matches. CPUs without VNNI are never tried: there oneDNN multiplies u8 x s8
pairs into saturating 16-bit intermediates, which can give wrong sums.

The probe also times the op against ``torch._int_mm``: on an AMD Zen 4 VM, torch 2.13's oneDNN ran its reference
int8 matmul for the packed weight (``ONEDNN_VERBOSE``: ``ref_int8``), correct but 850-2900x slower than
``torch._int_mm`` on the probe's product (8.5-8.9 s for MiniLM's 576x384 @ 384x1536, against 2.6-9 ms). A path
more than 20x slower is switched off (brgemm with its per-call overhead is 1-4x there).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from .cpu_features import cpu_has

__all__ = ["onednn_int8_available", "onednn_int8_status", "PackedInt8Weight", "pack_int8_weight", "int8_matmul"]


@dataclass(frozen=True)
class PackedInt8Weight:
    """A (N, K) int8 weight in oneDNN's blocked layout, plus the unit scales and zero points the op asks for."""

    packed: torch.Tensor  # opaque mkldnn tensor; process-local, never saved
    ones: torch.Tensor  # (N,) float32
    zeros: torch.Tensor  # (N,) int64


def pack_int8_weight(qweight: torch.Tensor) -> PackedInt8Weight:
    """(N, K) int8 codes -> the packed layout (a copy: N*K more bytes while the module lives)."""
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(f"pack_int8_weight expects a (N, K) int8 tensor, got {tuple(qweight.shape)} {qweight.dtype}")
    n = qweight.shape[0]
    packed = torch.ops.onednn.qlinear_prepack(qweight.contiguous(), None)
    return PackedInt8Weight(packed, torch.ones(n), torch.zeros(n, dtype=torch.long))


def int8_matmul(xq: torch.Tensor, weight: PackedInt8Weight) -> torch.Tensor:
    """(M, K) int8 codes x packed (N, K) -> (M, N) float32 holding the exact integer sums (rounded to float32)."""
    return torch.ops.onednn.qlinear_pointwise(xq, 1.0, 0, weight.packed, weight.ones, weight.zeros, None, 1.0, 0,
                                              torch.float32, "none", [], "")


def _cpu_has_vnni() -> bool:
    return cpu_has("vnni", "amx_tile")


def _probe_matches_int_mm() -> bool:
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((17, 1536, 48), (1, 64, 16), (40, 384, 32)):
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        x[0], w[0], w[1] = 127, 127, -128  # the largest sums: +-127*127*K and -127*128*K, past 2**24 at K=1536
        want = torch._int_mm(x, w.t()).float()
        if not torch.equal(int8_matmul(x, pack_int8_weight(w)), want):
            return False
    return True


# The packed product may be at most this many times slower than torch._int_mm. On Sapphire Rapids, oneDNN's brgemm
# with its per-call overhead measured 2.1-3.5x at the probe's small product, and a noisy moment once pushed it past an
# earlier limit of 4x (oneDNN switched off in one bench run, on in the next); the reference kernel this catches was
# 850-2900x slower, so 20x separates the two with room on both sides.
_SLOWER_LIMIT = 20.0


def _slowdown_vs_int_mm() -> float:
    """Best-of-5 time of the packed product over torch._int_mm's on a small (32, 256) @ (256, 256) product, after
    one untimed call of each (oneDNN builds its primitive on the first). The ratio is 1-4 for oneDNN's brgemm
    kernels and ~10**3 for its reference one."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (32, 256), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (256, 256), dtype=torch.int8, generator=gen)
    packed, wt = pack_int8_weight(w), w.t()

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(lambda: int8_matmul(x, packed)) / max(best(lambda: torch._int_mm(x, wt)), 1e-7)


@functools.lru_cache(maxsize=None)
def _check() -> tuple[bool, str]:
    if not hasattr(torch.ops.onednn, "qlinear_pointwise") or not torch.backends.mkldnn.is_available():
        return False, "unavailable: this torch build has no oneDNN int8 linear"
    if not _cpu_has_vnni():
        return False, "off: this CPU has no VNNI/AMX (oneDNN's int8 path could saturate); using torch._int_mm"
    try:
        ok = _probe_matches_int_mm()
    except (RuntimeError, TypeError) as exc:  # e.g. a torch release that changed the op's schema
        return False, f"unavailable: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    if not ok:
        return False, "off: the oneDNN int8 product did not match torch._int_mm on this CPU; using torch._int_mm"
    slowdown = _slowdown_vs_int_mm()
    if slowdown > _SLOWER_LIMIT:
        return False, (f"off: oneDNN's int8 product ran {slowdown:.0f}x slower than torch._int_mm on this CPU "
                       "(its reference kernel, not brgemm); using torch._int_mm")
    return True, "on (oneDNN int8 matmul, packed weights)"


def onednn_int8_available() -> bool:
    """True when the packed oneDNN int8 product runs here and matched ``torch._int_mm`` on the first-use probe."""
    return _check()[0]


def onednn_int8_status() -> str:
    """One line for ``leanformer env``."""
    return _check()[1]
