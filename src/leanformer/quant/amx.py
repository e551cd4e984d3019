"""W8A8's int8 product on Intel AMX tiles, rescale and bias fused: leanformer's own kernel (``csrc/amx_int8.cpp``).
Its int4 weight-only sibling is ``amx_w4.py``.

oneDNN's packed int8 matmul (``onednn.py``) reaches about a third of this CPU's AMX peak on MiniLM's FFN shapes
and hands back a float32 copy of the integer sums that the rescale then reads and rewrites. Our kernel keeps
each 32x32 block of sums in L1 between the tiles and the rescale, and writes the output once. Measured on a
Sapphire Rapids core at 576 rows (``benchmarks/bench_quant.py``'s kernel sweep): see docs/quant.md.

The result is ``((float(acc) * row_scale) * col_scale) + bias`` with the exact int32 sum ``acc``, the same float32
operations as ``torch._int_mm`` followed by the rescale, so W8A8 outputs are bit-identical whichever product
runs. As for oneDNN, that is checked on this CPU before first use (``_probe_matches_reference``) and the path
is switched off on any mismatch. It applies on CPUs with AMX-INT8, for weights with ``K % 64 == 0`` and
``N % 16 == 0`` (every Linear of BERT-family models), float32 outputs and float32 (or no) bias.

The weight is repacked once per module into the order the tiles read (``pack_amx_weight``): a plain int8
tensor of N*K bytes held in the module's kernel cache, so unlike oneDNN's opaque layout it can be copied.

CPUs with AVX512-VNNI and no AMX (AMD Zen 4, Intel Ice Lake) run the same packed weight through the VNNI kernel
(``csrc/vnni_int8.cpp``) with bit-identical outputs, checked by the same probe; ``int8_kernel()`` says which of
the two runs here, and ``run_amx_int8`` / ``amx_int8_linear`` call it.
"""
from __future__ import annotations

import functools

import torch

from .cpu_features import cpu_has
from .native import native_built, native_ops, native_status, required_native_ops

__all__ = ["TILE_ROWS", "TILE_DEPTH", "amx_int8_available", "amx_int8_status", "amx_shape_ok", "pack_amx_weight",
           "amx_int8_linear", "run_amx_int8", "run_amx_int8_codes", "run_amx_int8_norm", "int8_reference",
           "vnni_int8_available", "vnni_int8_status", "int8_kernel", "int8_kernel_available", "ACTIVATION_CODES",
           "activation_code", "kernel_ops", "probe_status", "sibling_status"]

TILE_ROWS = 16  # output columns per packed block (one B tile's width)
TILE_DEPTH = 64  # K consumed by one tile product


def amx_shape_ok(n: int, k: int) -> bool:
    """True when a (N, K) weight fits the tile layout without padding."""
    return n > 0 and k > 0 and n % TILE_ROWS == 0 and k % TILE_DEPTH == 0


def pack_amx_weight(qweight: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 codes -> (N/16, K/64, 16, 64) int8: tile (n, k), row r, byte 4j + t holds w[16n + j, 64k + 4r + t].

    That is the order the tile product reads its second operand in (four consecutive K values per column).
    """
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(f"pack_amx_weight expects a (N, K) int8 tensor, got {tuple(qweight.shape)} {qweight.dtype}")
    n, k = qweight.shape
    if not amx_shape_ok(n, k):
        raise ValueError(f"pack_amx_weight needs N % {TILE_ROWS} == 0 and K % {TILE_DEPTH} == 0, got N={n}, K={k}")
    blocks = qweight.reshape(n // TILE_ROWS, TILE_ROWS, k // TILE_DEPTH, TILE_DEPTH // 4, 4)  # [nb, j, kt, r, t]
    return blocks.permute(0, 2, 3, 1, 4).contiguous().view(n // TILE_ROWS, k // TILE_DEPTH, TILE_ROWS, TILE_DEPTH)


ACTIVATION_CODES = {None: 0, "gelu": 1}  # the kernels' epilogue activations (modules.FUSABLE_ACTIVATIONS)


def kernel_ops(kernel: str, activation: str | None):
    """(native ops that run ``kernel``, the kernels' code for its epilogue ``activation``); a clear error for
    an unknown activation or if the native kernels are unavailable here."""
    return required_native_ops(kernel), activation_code(activation)


def activation_code(activation: str | None) -> int:
    """The kernels' code for an epilogue ``activation``; a clear error for an unknown one."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {sorted(map(str, ACTIVATION_CODES))}, got {activation!r}")
    return ACTIVATION_CODES[activation]


def amx_int8_linear(xq: torch.Tensor, row_scale: torch.Tensor, packed: torch.Tensor, col_scale: torch.Tensor,
                    bias: torch.Tensor | None = None, *, activation: str | None = None, quantize_output: bool = False):
    """(M, K) int8 codes with (M, 1) scales x packed weight with (N,) scales, + bias -> (M, N) float32, on
    ``int8_kernel()``: the AMX tiles, or AVX512-VNNI on CPUs without them (``csrc/vnni_int8.cpp``, same outputs).

    ``activation="gelu"`` applies the exact (erf) GELU in the same pass, to within a few float32 ulps of
    ``F.gelu`` (``fusion.GELU_ABS_BOUND``). ``quantize_output=True`` also returns the output's per-token int8
    codes, computed while each block is in cache: ``(out, codes, scale, finite)``, equal to ``quantize_rows(out)``.
    """
    ops, act = kernel_ops("amx_int8_linear", activation)
    return run_amx_int8(ops, xq, row_scale, packed, col_scale, bias, act, quantize_output)


def run_amx_int8(ops, xq, row_scale, packed, col_scale, bias, act: int, quantize_output: bool):
    """``amx_int8_linear`` with the native ops and the activation code already resolved (kernels.py's per-call
    path, which has checked both)."""
    linear = ops.amx_int8_linear if amx_int8_available() else ops.vnni_int8_linear
    out, codes, scale, finite = linear(xq.contiguous(), row_scale.contiguous(), packed, col_scale.contiguous(),
                                       _NO_BIAS if bias is None else bias.contiguous(), act, quantize_output)
    return (out, codes, scale, bool(finite)) if quantize_output else out


def run_amx_int8_codes(ops, xq, row_scale, packed, col_scale, bias, act: int):
    """``run_amx_int8`` with ``quantize_output`` for a caller that needs only the output's per-token codes:
    ``(codes, scale, finite)``, equal bit for bit to that call's. The kernel keeps each row block's floats in a
    scratch block instead of writing the (M, N) float32 output. Where ``finite`` is False (a NaN or inf row) there
    is no output to fall back on: the caller runs ``run_amx_int8`` for it."""
    linear = ops.amx_int8_linear_codes if amx_int8_available() else ops.vnni_int8_linear_codes
    _, codes, scale, finite = linear(xq.contiguous(), row_scale.contiguous(), packed, col_scale.contiguous(),
                                     _NO_BIAS if bias is None else bias.contiguous(), act)
    return codes, scale, bool(finite)


def run_amx_int8_norm(ops, xq, row_scale, packed, col_scale, bias, residual, norm_weight, norm_bias, eps: float):
    """``run_amx_int8`` (no activation) followed by LayerNorm(out + residual) and its per-token codes, done on each
    finished row block inside the kernel: ``(out, codes, scale, finite)``, bit for bit what ``residual_layer_norm``
    (``residual_norm.py``'s fused pass) returns for the product's output."""
    linear = ops.amx_int8_linear_norm if amx_int8_available() else ops.vnni_int8_linear_norm
    out, codes, scale, finite = linear(xq.contiguous(), row_scale.contiguous(), packed, col_scale.contiguous(),
                                       _NO_BIAS if bias is None else bias.contiguous(), residual, norm_weight,
                                       norm_bias, eps)
    return out, codes, scale, bool(finite)


_NO_BIAS = torch.empty(0)

def int8_reference(xq, row_scale, w, col_scale, bias):
    """The exact W8A8 product every int8 path must equal: int64 sums, then the same float32 rescale."""
    acc = (xq.to(torch.int64) @ w.to(torch.int64).t()).to(torch.int32)  # exact at any row count
    y = acc.float().mul_(row_scale).mul_(col_scale)
    return y if bias is None else y.add_(bias)


def _probe_matches_reference(linear) -> bool:
    """Random codes, the extreme codes (sums past 2**24), partial row and column blocks, with and without bias,
    through ``linear`` (a native op with amx_int8_linear's signature)."""
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((1, 64, 16), (17, 1536, 48), (40, 384, 32), (33, 128, 80)):
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        x[0], w[0], w[1] = 127, 127, -128
        rs, cs = torch.rand(m, 1, generator=gen) + 0.01, torch.rand(n, generator=gen) + 0.01
        for bias in (None, torch.randn(n, generator=gen)):
            got = linear(x, rs, pack_amx_weight(w), cs, _NO_BIAS if bias is None else bias, 0, False)[0]
            if not torch.equal(got, int8_reference(x, rs, w, cs, bias)):
                return False
    return True


def _native_check(kernel: str, cpu_feature: str, name: str, label: str) -> tuple[bool, str]:
    """The availability check the two fused int8 kernels share: the CPU feature, the native build, the kernel's
    own ``<kernel>_int8_ready``, then the first-use probe through ``<kernel>_int8_linear``."""
    if not cpu_has(cpu_feature):
        return False, f"off: this CPU has no {name}"
    ops = native_ops()
    if ops is None:
        return False, f"off: native kernels {native_status()}"
    ready, status = getattr(ops, f"{kernel}_int8_ready", None), getattr(ops, f"{kernel}_int8_status", None)
    if ready is None or not ready():
        return False, f"off: {status() if status is not None else 'an older build without it'}"
    return probe_status(lambda: _probe_matches_reference(getattr(ops, f"{kernel}_int8_linear")),
                        f"on (leanformer {label}, rescale fused)",
                        f"off: the {name} product did not match the reference on this CPU")


def _native_status(check, cpu_feature: str, build: bool) -> str:
    """``check``'s status line; with ``build=False``, "not checked yet" instead of compiling the native kernels."""
    if not build and check.cache_info().currsize == 0 and cpu_has(cpu_feature) and not native_built():
        return "not checked yet (checked on the first W8A8 forward, once the native kernels are built)"
    return check()[1]


@functools.lru_cache(maxsize=None)
def _check() -> tuple[bool, str]:
    # torch has no AMX-INT8 probe; the build checks it (__AMX_INT8__ with -march=native)
    return _native_check("amx", "amx_tile", "AMX", "AMX int8 kernel")


def probe_status(probe, on: str, failed: str) -> tuple[bool, str]:
    """(available, status line) from a first-use probe: ``on`` if it passes, ``failed`` if not, and the error
    if the kernel raises."""
    try:
        ok = probe()
    except RuntimeError as exc:
        return False, f"unavailable: {str(exc).strip().splitlines()[0][:200]}"
    return (True, on) if ok else (False, failed)


def sibling_status(check, build: bool, forward: str, parents=None) -> str:
    """``leanformer env``'s line for a kernel that shares the W8A8 kernel's build (``check``: its cached
    ``(available, status)`` function; ``parents``: the status functions of the int8 kernels it can run on, by
    default the AMX one's); ``build=False`` does not compile the native kernels to find out, and names the
    ``forward`` that will check it."""
    if not build and check.cache_info().currsize == 0:
        for parent in parents or (amx_int8_status,):
            status = parent(build=False)
            if status.startswith("not checked yet"):
                return status.replace("W8A8 forward", forward)
    return check()[1]


def amx_int8_available() -> bool:
    """True when the AMX product runs here and matched the exact reference on the first-use probe."""
    return _check()[0]


def amx_int8_status(build: bool = True) -> str:
    """One line for ``leanformer env``; ``build=False`` does not compile the native kernels to find out."""
    return _native_status(_check, "amx_tile", build)


@functools.lru_cache(maxsize=None)
def _vnni_check() -> tuple[bool, str]:
    return _native_check("vnni", "vnni", "VNNI", "AVX512-VNNI int8 kernel")


def vnni_int8_available() -> bool:
    """True when the AVX512-VNNI product (``csrc/vnni_int8.cpp``) runs here and matched the exact reference on
    the first-use probe."""
    return _vnni_check()[0]


def vnni_int8_status(build: bool = True) -> str:
    """One line for ``leanformer env``; ``build=False`` does not compile the native kernels to find out."""
    return _native_status(_vnni_check, "vnni", build)


def int8_kernel() -> str | None:
    """Which of leanformer's fused int8 kernels W8A8 and W4A8 layers run on here: "amx" (tiles), "vnni"
    (AVX512-VNNI, for CPUs without AMX such as AMD Zen 4) or None (oneDNN / ``torch._int_mm`` and a separate
    rescale). Both kernels take the same packed weight and give bit-identical outputs."""
    if amx_int8_available():
        return "amx"
    return "vnni" if vnni_int8_available() else None


def int8_kernel_available() -> bool:
    """True when ``int8_kernel()`` names a kernel."""
    return int8_kernel() is not None
