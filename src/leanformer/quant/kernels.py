"""Kernel paths for quantized Linears and the rule that picks one per call.

Measured on this project's CPUs (research note, "Kernels"; re-measured by ``benchmarks/bench_quant.py``):
* ``aten._weight_int8pack_mm`` / ``aten._weight_int4pack_mm_for_cpu`` beat unpack + bf16 GEMM only for few
  rows and only with bf16 activations (fp32 activations run 30-100x slower). Crossovers measured on MiniLM's
  shapes (384x1536, 1536x384, 384x384, 1 thread): on an AMD EPYC (AVX512-BF16) int8 ~32-64 rows, int4 ~128
  rows; on a Sapphire Rapids (AMX) both ~24-32 rows. Hence the defaults ``int8_rows=32`` / ``int4_rows=96``,
  and 24 / 24 on AMX CPUs.
* For more rows, unpacking the codes to bf16 and running one dense oneDNN GEMM is faster.
* W8A8 modules quantize activations per token and multiply int8 x int8: leanformer's AMX kernel with the
  rescale fused on AMX CPUs (``amx.py``), else oneDNN's matmul on a packed weight where it applies
  (``onednn.py``), else ``torch._int_mm``; all three give the same exact integer sums and the same outputs.
  W4A8 modules (4-bit group codes, ``w4a8.py``) run the same paths on their weight requantized to an int8
  grid: the AMX kernel unpacks it from the codes on every call, the others cache it.

Guards found here: ``_weight_int8pack_mm`` returns NaN/inf or crashes when K % 16 != 0 and segfaults on a
weight that is not 64-byte aligned (as safetensors hands them out); the int4 CPU layout needs N % 16 == 0
and a group size in {32, 64, 128, 256}; other shapes take the dequant path.

The choice is a deterministic function of (module format, rows, device, dtype): the same input in a fresh
process runs the same kernel, so saved models reproduce outputs exactly. ``KernelPolicy`` holds the knobs.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .amx import activation_code, amx_shape_ok, int8_kernel_available, pack_amx_weight, run_amx_int8
from .amx_w4 import (amx_w4_available, amx_w4_codebook_linear, amx_w4_linear, amx_w4_shape_ok, codebook_tables,
                     pack_amx_int4)
from .cpu_features import cpu_has
from .native import native_ops
from .onednn import int8_matmul, onednn_int8_available, pack_int8_weight
from .w4a8 import amx_w4a8_available, requantized_weight, run_amx_w4a8, w4a8_shape_ok, w4a8_tables

__all__ = ["KernelPolicy", "get_policy", "set_policy", "choose_kernel", "run_kernel", "KERNELS",
           "fast_bf16_cpu", "quantize_per_token", "quantize_per_token_shared",
           "prepare_shared", "offer_shared", "quantize_activations", "native_ops_for"]


def fast_bf16_cpu() -> bool:
    """True when this CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 GEMMs win."""
    return cpu_has("avx512_bf16", "amx_tile")


def _amx_cpu() -> bool:
    return cpu_has("amx_tile")


def _default_rows(amx: int, other: int):
    """Row crossovers measured per kind of CPU: on AMX CPUs oneDNN's bf16 GEMM (the dequant path) overtakes the
    packed kernels much earlier - Sapphire Rapids: int4 and int8 ~24-32 rows; AMD EPYC (AVX512-BF16, no AMX):
    int8 ~32-64, int4 ~128 (benchmarks/bench_quant.py's kernel sweep, 1 thread)."""
    return field(default_factory=lambda: amx if _amx_cpu() else other)


@dataclass
class KernelPolicy:
    int8_rows: int = _default_rows(24, 32)  # rows <= this use _weight_int8pack_mm (bf16 activations)
    int4_rows: int = _default_rows(24, 96)  # rows <= this use _weight_int4pack_mm_for_cpu
    compute_dtype: str = "auto"  # "auto" | "float32" | "bfloat16" for the dequant path on fp32 inputs
    allow_pack_kernels: bool = True
    # keep a second, group-planar copy of int4 codes in memory (packing.group_planar): ~3-4x faster unpacking
    # on the batch path for K/2 more bytes per row; False halves int4 weight memory at run time
    planar_cache: bool = True
    # Linears reading the same unchanged tensor (q/k/v) reuse one activation preparation (prepare_shared)
    share_prepared_inputs: bool = True
    # fused C++ passes of the W8A8 and int4 batch kernels on CPU (native.py): bit-identical, compiled on first use
    native: bool = True
    # W8A8's int8 product through oneDNN on a packed copy of the weight (onednn.py): bit-identical to
    # torch._int_mm and 1.3-4x faster on AMX CPUs at 576 rows, for N*K more bytes of memory per layer at run time
    onednn_int8: bool = True
    # ... from this many rows: below it torch._int_mm's lower per-call overhead (~30 vs ~65 us) wins on MiniLM's
    # shapes on Sapphire Rapids (1 thread; oneDNN wins everywhere from ~256 rows, 1.3-4x at 576)
    onednn_rows: int = 128
    # W8A8 through leanformer's AMX kernel (amx.py), rescale and bias fused, at any row count: bit-identical;
    # against oneDNN + rescale on MiniLM's shapes (Sapphire Rapids, 1 thread, scratch timing) 3.3-3.6x faster at
    # 384->384, 1.3-1.8x at 384->1536, 0.65-1.35x at 1536->384 (576 rows); 1-3x at 18 rows. N*K bytes per layer
    amx_int8: bool = True
    # int4 weight-only layers above int4_rows rows through leanformer's AMX bf16 kernel (amx_w4.py): codes unpacked
    # in cache instead of to memory, float32 sums (not bf16-rounded ones as oneDNN's bf16 GEMM returns)
    amx_w4: bool = True
    # BERT layers of a model on leanformer's short attention call their children directly (fast_layer.py):
    # bit-identical, a MiniLM W8A8 forward 1.09x faster at batch 1 (no measurable change at batch 32)
    fast_layers: bool = True
    # ... and those whose every Linear runs the fused int8 kernel (W8A8 / W4A8, fuse=True) run as one sequence of
    # native calls without the modules' Python dispatch (int8_layer.py): bit-identical
    int8_layers: bool = True
    # ... and a BERT encoder whose every layer would take that sequence with W8A8 weights runs all of them in one
    # native call (int8_encoder.py): bit-identical
    int8_encoder: bool = True


_POLICY = KernelPolicy()


def get_policy() -> KernelPolicy:
    return _POLICY


def set_policy(**changes) -> KernelPolicy:
    """Change the global kernel policy (e.g. ``set_policy(allow_pack_kernels=False)`` to always dequantize)."""
    for key, value in changes.items():
        if not hasattr(_POLICY, key):
            raise ValueError(f"unknown kernel policy field {key!r}")
        setattr(_POLICY, key, value)
    if _POLICY.compute_dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be auto, float32 or bfloat16, got {_POLICY.compute_dtype!r}")
    return _POLICY


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype != torch.float32:
        return x.dtype  # bf16/fp16 inputs: compute in their dtype
    choice = _POLICY.compute_dtype
    if choice == "auto":
        return torch.bfloat16 if (x.device.type == "cpu" and fast_bf16_cpu()) else torch.float32
    return getattr(torch, choice)


def _int8pack_ok(mod) -> bool:
    return (mod.bits == 8 and mod.zero is None and mod.codebook is None and mod.group_size is None
            and mod.in_features % 16 == 0)


def _group_size(mod) -> int:
    """Input features per scale: the whole row for per-channel weights."""
    return mod.in_features if mod.group_size is None else mod.group_size


def _int4pack_ok(mod) -> bool:
    gs = _group_size(mod)
    return (mod.bits == 4 and mod.codebook is None and gs in (32, 64, 128, 256) and mod.out_features % 16 == 0)


def choose_kernel(mod, rows: int, x: torch.Tensor) -> str:
    """Name of the kernel in ``KERNELS`` that ``mod`` should run for a (rows, K) input ``x``."""
    if mod.act_bits == 8:
        return "w4a8" if mod.bits == 4 else "w8a8"
    on_cpu = x.device.type == "cpu"
    if on_cpu and _POLICY.allow_pack_kernels and fast_bf16_cpu() and x.dtype in (torch.float32, torch.bfloat16):
        if rows <= _POLICY.int8_rows and _int8pack_ok(mod):
            return "int8pack"
        if rows <= _POLICY.int4_rows and _int4pack_ok(mod):
            return "int4pack"
    # bf16 activations, as the dequant path would use them (compute_dtype "auto" on this CPU, or "bfloat16")
    if (_POLICY.amx_w4 and x.dtype in (torch.float32, torch.bfloat16) and _compute_dtype(x) == torch.bfloat16
            and _amx_w4_ok(mod) and native_ops_for(x) is not None and amx_w4_available()):
        return "amx_w4"
    return "dequant"


def _amx_w4_ok(mod) -> bool:
    gs = _group_size(mod)
    # codebooks (ANT) of up to 16 entries index nibbles whatever their width; linear codes are 4-bit only
    nibbles = mod.bits <= 4 if mod.codebook is not None else mod.bits == 4
    return nibbles and mod.act_bits is None and amx_w4_shape_ok(mod.out_features, mod.in_features, gs)


# ---------------------------------------------------------------------------------------------- kernels
def _epilogue(y: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Add the (fp32) bias and reach ``out_dtype``."""
    if bias is None:
        return y.to(out_dtype)
    if out_dtype == torch.float32 and y.dtype == torch.bfloat16 and bias.dtype == torch.float32 and y.dim() == 2:
        ops = native_ops_for(y)
        if ops is not None:  # one fused sweep: float(y) + bias
            return ops.bf16_to_float_add(y.contiguous(), bias.contiguous())
    if out_dtype == torch.float32:
        # cast then add in place: mixed bf16 + fp32 promotion in one op is ~20% slower on CPU (measured)
        return y.add_(bias) if y.dtype == torch.float32 else y.float().add_(bias)
    return (y + bias.to(y.dtype)).to(out_dtype)


def _cast_kind(dtype: torch.dtype) -> str:
    """The prepare_shared kind of an input's copy in ``dtype``."""
    return f"cast_{dtype}"


_CAST_BF16 = _cast_kind(torch.bfloat16)  # the bf16 copy weight-only kernels read, which the AMX int4 kernel offers


def _shared_cast(x2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x2`` in ``dtype``, cast once per input tensor for all the layers that read it (q/k/v), or the copy a
    fused kernel offered for it (``offer_shared``)."""
    return x2 if x2.dtype == dtype else prepare_shared(_cast_kind(dtype), x2, lambda t: t.to(dtype))


def _dequant(mod, x2, bias, out_dtype):
    dtype = _compute_dtype(x2)
    w = mod.dequantized_weight(dtype)  # (N, K)
    xc = _shared_cast(x2, dtype)  # (M, K)
    return _epilogue(F.linear(xc, w), bias, out_dtype)


def _int8pack(mod, x2, bias, out_dtype):
    scales = mod.kernel_cache("int8pack_scales", lambda: mod.scale.reshape(-1).to(torch.bfloat16))
    # the kernel segfaults on a weight that is not 64-byte aligned (e.g. straight out of safetensors)
    weight = mod.kernel_cache("int8pack_weight", lambda: _aligned(mod.qweight))
    y = torch.ops.aten._weight_int8pack_mm(_aligned(x2.to(torch.bfloat16)), weight, scales)
    return _epilogue(y, bias, out_dtype)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous with a 64-byte-aligned data pointer (a copy only when needed)."""
    if t.is_contiguous() and t.data_ptr() % 64 == 0:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)  # the CPU allocator aligns to 64 bytes
    return out.copy_(t)


def _int4pack(mod, x2, bias, out_dtype):
    gs = _group_size(mod)
    packed, sz = mod.kernel_cache("int4pack", lambda: _build_int4pack(mod))
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), packed, gs, sz)
    return _epilogue(y, bias, out_dtype)


def _build_int4pack(mod):
    """Repack our nibbles into the CPU int4 layout; scale/zero into its (G, N, 2) bf16 table.

    The kernel computes ``w = (q - 8) * s + m``; ours is ``(q - z) * s`` (asym, q in 0..15) or ``c * s``
    with ``q = c + 8`` (sym), so ``m = (8 - z) * s`` (z = 8 for symmetric).
    """
    q = mod.unpacked_codes().to(torch.int32)  # (N, K)
    if mod.zero is None:
        q = q + 8
        m = torch.zeros_like(mod.scale, dtype=torch.float32)
    else:
        m = (8 - mod.zero.float()) * mod.scale.float()  # (N, G)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    sz = torch.stack([mod.scale.float().T, m.T], dim=-1).to(torch.bfloat16).contiguous()  # (G, N, 2)
    return packed, sz


def _amx_w4(mod, x2, bias, out_dtype, activation=None, prepare_output=False):
    gs = _group_size(mod)
    operands = mod.kernel_cache("amx_w4", lambda: _build_amx_w4(mod))
    xb = _shared_cast(x2, torch.bfloat16)
    bias = None if bias is None else bias.float()
    prepare_output = prepare_output and out_dtype == torch.float32 and _may_share(x2)
    product = amx_w4_codebook_linear if mod.codebook is not None else amx_w4_linear
    y = product(xb, *operands, gs, bias, activation=activation, bf16_output=prepare_output)
    if prepare_output:  # the next weight-only layer reading y finds its bf16 copy ready (prepare_shared)
        y, y_bf16 = y
        offer_shared(_CAST_BF16, y, y_bf16)
    return y if out_dtype == torch.float32 else y.to(out_dtype)  # (M, N)


def _build_amx_w4(mod):
    """Tile-ordered codes and (G, N) float32 tables of the bf16 zero points (or, for a codebook, its table and
    each column's row per group) and the scales the reference uses."""
    from .packing import NIBBLE_OFFSET

    groups = mod.scale.shape[1]
    scale = mod.scale.to(torch.bfloat16).float().t().contiguous()
    if mod.codebook is not None:  # codes are unsigned indices, stored as they are
        table, ids = codebook_tables(mod.codebook, mod.out_features, groups)
        return pack_amx_int4(mod.raw_nibbles()), table, ids, scale
    if mod.zero is not None:
        zero = mod.zero.to(torch.bfloat16).float().t()
    else:  # signed codes are stored with an offset of 8 (raw nibbles), which the reference subtracts
        zero = torch.full((groups, mod.out_features), float(NIBBLE_OFFSET if mod.signed else 0))
    return pack_amx_int4(mod.raw_nibbles()), zero.contiguous(), scale


def quantize_per_token(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> int8 codes (M, K) and fp32 scales (M, 1), symmetric absmax per row."""
    # max(amax, -amin): two vectorised reductions, no |x| temporary. linalg.vector_norm(inf) and aminmax are
    # 50-70x slower on CPU here (measured: 1.9 ms vs 0.03 ms for 576x384).
    absmax = torch.maximum(x2.amax(-1, keepdim=True), x2.amin(-1, keepdim=True).neg())  # (M, 1)
    absmax = absmax.float().clamp_min_(1e-8)
    # multiply by the reciprocal: one (M, 1) division instead of an (M, K) one (~10% of this function).
    # |x * 127 / absmax| <= 127 by construction, so no clamp is needed before the cast
    q = torch.mul(x2, 127.0 / absmax).round_().to(torch.int8)
    return q, absmax / 127.0


class _LastInputs(threading.local):
    """Per thread: for each kind of input preparation, the last input prepared and the result."""

    def __init__(self):
        self.slots: dict = {}  # kind -> (weakref to the memory's owner, view key, result)


_LAST = _LastInputs()


def prepare_shared(kind: str, x2: torch.Tensor, prepare):
    """``prepare(x2)``, reusing the previous result of this ``kind`` when ``x2`` is the same, unchanged data.

    The query, key and value projections of an attention block read one tensor; preparing it once (per-token
    int8 codes for W8A8, the bf16 copy for the dequant path) instead of three times removes a third of those
    passes. "Same" means: the tensor that owns the memory is still alive (held by weak reference, so its
    memory cannot have been recycled), the view (pointer, shape, strides, dtype) is identical, and its
    version counter - bumped by every in-place write through any view - has not moved. Inference-mode
    tensors have no version counter, and inputs that need gradients may be rewritten by autograd-visible
    code paths: neither is ever reused.
    """
    if not _may_share(x2):
        return prepare(x2)
    base, key = _identity(x2)
    slot = _LAST.slots.get(kind)
    if slot is not None and slot[0]() is base and slot[1] == key:
        return slot[2]
    result = prepare(x2)
    _LAST.slots[kind] = (weakref.ref(base), key, result)
    return result


def offer_shared(kind: str, x2: torch.Tensor, result) -> None:
    """Record ``result`` as the ``kind`` preparation of ``x2`` (computed by its producer, e.g. the int8 codes
    of a W8A8 layer's output, fused into that layer's kernel), for the next ``prepare_shared`` to reuse."""
    if _may_share(x2):
        base, key = _identity(x2)
        _LAST.slots[kind] = (weakref.ref(base), key, result)


def _may_share(x2: torch.Tensor) -> bool:
    # under torch.compile the identity/version test would be traced once and baked in: never reuse there
    return not (x2.is_inference() or x2.requires_grad or not _POLICY.share_prepared_inputs
                or torch.compiler.is_compiling())


def _identity(x2: torch.Tensor):
    """(the tensor owning the memory, the view's key): equal for the same, unchanged data."""
    base = x2._base if x2._base is not None else x2
    return base, (x2.data_ptr(), tuple(x2.shape), x2.stride(), x2.dtype, x2.device, x2._version)


def native_ops_for(x2: torch.Tensor):
    """The fused CPU ops for this input, or None (other devices, compiling, disabled, or failed to build)."""
    if x2.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return native_ops()


def quantize_activations(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_per_token``, through the fused native op when it applies (bit-identical results)."""
    ops = native_ops_for(x2) if x2.dtype == torch.float32 else None
    if ops is not None:
        # a strided view (e.g. the pooler's first-token rows) is copied: 32 x 384 floats cost ~1 us, the eager
        # path ~175 us (MiniLM, Zen 4)
        codes, scale, finite = ops.quantize_rows(x2.contiguous())
        if finite:  # NaN / inf rows: keep the eager path's exact behaviour rather than define a new one
            return codes, scale
    return quantize_per_token(x2)


INT8_PER_TOKEN = "int8_per_token"  # the prepare_shared kind of W8A8's input codes (offered by fused producers)


def quantize_per_token_shared(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_activations`` through ``prepare_shared``."""
    # a lambda, not the function itself: the name is looked up per call (tests wrap it to count calls)
    return prepare_shared(INT8_PER_TOKEN, x2, lambda t: quantize_activations(t))


_NO_BIAS = torch.empty(0)


def _w8a8(mod, x2, bias, out_dtype, activation=None, prepare_output=False):
    xq, xs = quantize_per_token_shared(x2)  # (M, K) int8, (M, 1)
    ops = native_ops_for(xq)  # resolved once per call (the native module's lookup is a measurable cost here)
    if (out_dtype == torch.float32 and (bias is None or bias.dtype == torch.float32) and ops is not None
            and _amx_applies(mod)):
        prepare_output = prepare_output and _may_share(x2)
        res = _amx_int8_product(ops, mod, xq, xs, bias, activation_code(activation), prepare_output)
        if not prepare_output:
            return res  # (M, N), rescaled, + bias, activated
        y, codes, scale, finite = res
        if finite:  # the next W8A8 layer reading y finds its codes ready (prepare_shared)
            offer_shared(INT8_PER_TOKEN, y, (codes, scale))
        return y
    return _activate(_w8a8_unfused(mod, xq, xs, bias, out_dtype), activation)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation == "gelu":
        return F.gelu(y)
    raise ValueError(f"unknown activation {activation!r}")


def _w8a8_unfused(mod, xq, xs, bias, out_dtype):
    acc = _int8_product(mod, xq)  # (M, N): int32, or float32 holding the same integers (oneDNN)
    ops = native_ops_for(acc) if out_dtype == torch.float32 and (bias is None or bias.dtype == torch.float32) else None
    if ops is not None:  # one fused sweep instead of cast, two multiplies and the bias add below
        rescale = ops.rescale_int32 if acc.dtype == torch.int32 else ops.rescale_float_
        ws = _w8a8_scale(mod).view(-1)  # (N,) view of the same cached row
        return rescale(acc, xs, ws, _NO_BIAS if bias is None else bias.contiguous())
    # cast, then in-place broadcasts: ~10x faster than multiplying by the (M, N) outer product of the two
    # scale vectors, and ~30% faster than the mixed int32 * fp32 promotion (measured)
    y = acc.float().mul_(xs).mul_(_w8a8_scale(mod))
    return _epilogue(y, bias, out_dtype)


def _amx_applies(mod) -> bool:
    # (with the native ops available: the kernel lives there, so set_policy(native=False) turns it off too)
    if not _POLICY.amx_int8:
        return False
    if mod.bits == 4:  # W4A8: the codes are unpacked onto the int8 grid per call (w4a8.py)
        return w4a8_shape_ok(mod.out_features, mod.in_features, _group_size(mod)) and amx_w4a8_available()
    return amx_shape_ok(mod.out_features, mod.in_features) and int8_kernel_available()


def _amx_int8_product(ops, mod, xq, xs, bias, act: int, prepare_output: bool):
    """The fused int8 kernel's outputs (``amx.run_amx_int8``: AMX or AVX512-VNNI) for a W8A8 or W4A8 layer."""
    if mod.bits == 4:
        tables = mod.kernel_cache("w4a8_amx", lambda: w4a8_tables(mod))
        return run_amx_w4a8(ops, xq, xs, tables, _group_size(mod), bias, act, prepare_output)
    return run_amx_int8(ops, xq, xs, _amx_packed(mod), _w8a8_scale(mod).view(-1), bias, act, prepare_output)


def _amx_packed(mod) -> torch.Tensor:
    """A W8A8 layer's weight in the fused int8 kernels' layout (``pack_amx_weight``), cached on the module."""
    return mod.kernel_cache("w8a8_amx", lambda: pack_amx_weight(mod.qweight))


def _int8_product(mod, xq: torch.Tensor) -> torch.Tensor:
    """xq @ qweight.T for (M, K) int8 codes: oneDNN on a packed weight where it applies (same values, as float32),
    else ``torch._int_mm`` (int32)."""
    if (xq.device.type == "cpu" and _POLICY.onednn_int8 and xq.shape[0] >= _POLICY.onednn_rows
            and not torch.compiler.is_compiling() and onednn_int8_available()):
        return int8_matmul(xq, mod.kernel_cache("w8a8_onednn", lambda: pack_int8_weight(_int8_weight(mod))))
    wt = mod.kernel_cache("w8a8_t", lambda: _int8_weight(mod).t())  # (K, N) int8 view, no copy
    return torch._int_mm(xq, wt)


def _int8_weight(mod) -> torch.Tensor:
    """(N, K) int8 codes of the product: a W8A8 layer's own, or a W4A8 layer's requantized weight (an N*K-byte
    copy, held by the paths off the AMX kernel, which unpacks it per call instead)."""
    if mod.bits == 4:
        return _requantized(mod)[0]
    return mod.qweight


def _requantized(mod):
    """A W4A8 layer's ``requantized_weight``, computed once for the paths off the AMX kernel."""
    return mod.kernel_cache("w4a8_int8", lambda: requantized_weight(mod))


def _w8a8_scale(mod) -> torch.Tensor:
    """(1, N) fp32 per-channel weight scales, contiguous, cached on the module."""
    if mod.bits == 4:
        return mod.kernel_cache("w4a8_scale", lambda: _requantized(mod)[1].reshape(1, -1).contiguous())
    return mod.kernel_cache("w8a8_scale", lambda: mod.scale.float().reshape(1, -1).contiguous())


# "w4a8" runs W8A8's code: only the int8 weight's source differs (_int8_weight, _amx_int8_product)
KERNELS = {"dequant": _dequant, "int8pack": _int8pack, "int4pack": _int4pack, "amx_w4": _amx_w4, "w8a8": _w8a8,
           "w4a8": _w8a8}
_FUSING = {"amx_w4", "w8a8", "w4a8"}  # kernels taking (activation, prepare_output); the others get F.gelu applied after


def run_kernel(name: str, mod, x2: torch.Tensor, bias: torch.Tensor | None = None,
               out_dtype: torch.dtype | None = None, *, activation: str | None = None,
               prepare_output: bool = False) -> torch.Tensor:
    """(M, K) -> act((M, N) plus ``bias``), in ``out_dtype`` (default: the input's dtype).

    ``activation`` ("gelu" or None) is fused into the AMX kernels' epilogues and applied after the others;
    ``prepare_output`` lets those kernels hand the next layer its input already prepared (``offer_shared``):
    the int8 codes for a W8A8 layer, the bf16 copy for a weight-only one.
    """
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known: {sorted(KERNELS)}")
    if name in _FUSING:
        return KERNELS[name](mod, x2, bias, out_dtype or x2.dtype, activation, prepare_output)
    return _activate(KERNELS[name](mod, x2, bias, out_dtype or x2.dtype), activation)
