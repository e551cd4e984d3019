"""Optional native CPU kernels, compiled on this machine the first time they are needed.

``csrc/quant_cpu.cpp`` fuses the elementwise passes of the batch kernels: around the int8 product in
dynamic W8A8 layers (activation quantization; int32 or float32 -> float rescale with bias), and around the
bf16 GEMM of weight-only int4 layers (unpack + zero point + scale in one pass; bf16 -> float + bias). The
eager versions in ``kernels.py`` / ``modules.py`` stay the reference and the fallback: the native ones
produce bit-identical outputs (tested), so whether they are used changes speed only. One more op serves the
quantizer, not the forward: the clip search's per-group squared error (``rtn.py``), equal to the eager score
up to the rounding of its final sum. ``csrc/amx_int8.cpp`` adds W8A8's int8 product on AMX tiles with the
rescale fused (``amx.py``; compiled only where ``-march=native`` has AMX-INT8). Measured on MiniLM, batch 32,
1 thread: see docs/quant.md.

The build uses ``torch.utils.cpp_extension.load`` (needs a C++ compiler and ``ninja``, a dependency of
leanformer) and is cached by torch under ``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR``); later
processes load it in well under a second. ``-march=native`` targets this CPU, so the cache key includes
the CPU's instruction-set level. If anything fails (no compiler, an odd platform), one warning is printed
and the eager path runs. Set ``LEANFORMER_NATIVE=0`` or ``set_policy(native=False)`` to never build.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["native_ops", "required_native_ops", "native_status", "native_built"]

_SOURCES = [Path(__file__).parent / "csrc" / name for name in ("quant_cpu.cpp", "amx_int8.cpp", "amx_w4.cpp",
                                                                   "short_attention.cpp", "residual_norm.cpp",
                                                                   "embedding_rows.cpp", "w4a8_unpack.cpp",
                                                                   "vnni_int8.cpp", "ant_search.cpp",
                                                                   "int8_encoder.cpp")]
_LOCK = threading.Lock()
_STATE: dict = {}  # "ops" -> loaded module or None; "error" -> why it is None


def _extension_name() -> str:
    from .cpu_features import cpu_has

    capability = torch.backends.cpu.get_cpu_capability().lower()  # e.g. "avx512": -march=native differs by CPU
    # AVX512 CPUs with and without AMX build different code (amx_int8.cpp compiles its kernel only with AMX)
    return f"leanformer_quant_cpu_{capability}{'_amx' if cpu_has('amx_tile') else ''}"


_GET_POLICY = []  # kernels.get_policy, bound on first use (kernels.py imports this module)


def _enabled() -> bool:
    if not _GET_POLICY:
        from .kernels import get_policy

        _GET_POLICY.append(get_policy)
    return _GET_POLICY[0]().native and os.environ.get("LEANFORMER_NATIVE", "1") != "0"


def native_ops():
    """The compiled module (``quantize_rows``, ``rescale_int32``, ``rescale_float_``, ``dequant_int4_planar``,
    ``bf16_to_float_add``, ``group_sq_err``, ``amx_int8_linear``), or None when disabled or unavailable."""
    if not _enabled():
        return None
    if "ops" in _STATE:
        return _STATE["ops"]
    with _LOCK:
        if "ops" not in _STATE:
            _STATE["ops"] = _build()
    return _STATE["ops"]


def required_native_ops(kernel: str):
    """``native_ops()`` for a caller that has no fallback: a clear error naming ``kernel`` when they are
    unavailable here."""
    ops = native_ops()
    if ops is None:
        raise RuntimeError(f"{kernel} needs leanformer's native CPU kernels, which are unavailable here "
                           f"({native_status()})")
    return ops


def native_built() -> bool:
    """True once this process has tried to load the kernels (whether or not that worked)."""
    return "ops" in _STATE


def native_status() -> str:
    """One line for ``leanformer env`` and bug reports."""
    if not _enabled():
        return "off (LEANFORMER_NATIVE=0 or set_policy(native=False))"
    if "ops" not in _STATE:
        return "not built yet (built on first use: a quantized batch forward or a clip search on CPU)"
    ops = _STATE["ops"]
    if ops is None:
        return f"unavailable: {_STATE.get('error')}"
    # the kernels run on torch's intra-op threads only in a build with -fopenmp (see _build)
    used = ops.parallel_threads_used(64) if hasattr(ops, "parallel_threads_used") else 1
    return f"loaded, kernels on {used} of torch's {torch.get_num_threads()} threads"


def _parallel_flag() -> str:
    """-fopenmp where torch's own intra-op threads are OpenMP's (Linux wheels): at::parallel_for in the kernels
    compiles to a serial call without it, and with it ATen's header uses the OpenMP runtime torch has loaded (the
    GOMP symbols stay undefined in the extension and bind to it), so torch.set_num_threads governs the kernels too.
    Elsewhere (torch's native thread pool, a compiler without OpenMP such as Apple clang) only the simd pragmas."""
    parallel_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return "-fopenmp" if parallel_openmp and sys.platform.startswith("linux") else "-fopenmp-simd"


def _build():
    try:
        from torch.utils.cpp_extension import load

        # a cached build loads in well under a second; say something only when a real compile is under way
        notice = threading.Timer(2.0, lambda: print("leanformer: compiling the native quantization CPU kernels "
                                                     "(once per machine, two to four minutes)...", file=sys.stderr, flush=True))
        notice.start()
        try:
            return load(name=_extension_name(), sources=[str(p) for p in _SOURCES],
                        extra_cflags=["-O3", "-march=native", "-ffp-contract=off", _parallel_flag()], verbose=False)
        finally:
            notice.cancel()
    except Exception as exc:  # no compiler, no ninja, unsupported platform: the eager path is always there
        _STATE["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc) else ''}"
        warnings.warn(f"leanformer native quantization kernels unavailable ({_STATE['error']}); using the eager path",
                      RuntimeWarning, stacklevel=3)
        return None
