"""Quantized drop-in modules that store packed codes and really run low-bit.

* ``QuantizedLinear``: packed int4 (two per byte) or int8 codes + fp16 scales (+ zeros / codebook); the
  forward picks a kernel per call (``kernels.choose_kernel``). ``act_bits=8`` makes it a dynamic W8A8 layer
  (8-bit weights) or W4A8 layer (4-bit group weights, ``w4a8.py``).
* ``QuantizedConv2d``: same storage over the flattened (I*kh*kw) axis; forward dequantizes (no int conv
  kernel on CPU worth using) - it exists so SQuant's conv results are real, smaller checkpoints.
* ``QuantizedEmbedding``: per-row (or per-group) codes; a lookup dequantizes only the gathered rows.

Buffers (``qweight``, ``scale``, ``zero``, ``codebook``, ``bias``) are exactly what goes into safetensors.
Kernel layouts (int4 CPU tiles, bf16 scale tables) live in a non-persistent cache rebuilt on first use
and dropped whenever a state dict is loaded.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from .amx_w4 import codebook_tables
from .kernels import choose_kernel, get_policy, native_ops_for, run_kernel
from .packing import (NIBBLE_OFFSET, group_planar, pack_codes, packed_shape, unpack_codes, unpack_group_planar_to,
                      unpack_nibbles_to)
from .qweight import QuantizedWeight, lookup

__all__ = ["QuantizedLinear", "QuantizedConv2d", "QuantizedEmbedding", "FusedActivation", "QUANTIZED_MODULES",
           "FUSABLE_ACTIVATIONS", "set_activation_dtype_"]

FUSABLE_ACTIVATIONS = (None, "gelu")  # "gelu": the exact (erf) GELU


class _PackedWeightMixin(nn.Module):
    """Shared storage for a (N, K) grid of codes with per-group scale/zero or a codebook."""

    def _init_storage(self, n: int, k: int, *, bits: int, group_size: int | None, symmetric: bool,
                      codebook, scale_dtype: torch.dtype, fmt: str, device=None) -> None:
        """``codebook``: False, True / "tensor" (one (2**bits,) table), "channel" ((N, 2**bits)) or
        "group" ((N, G, 2**bits))."""
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
        if group_size is not None and (group_size <= 0 or k % group_size):
            raise ValueError(f"group_size={group_size} does not divide in_features={k}")
        self.bits, self.group_size, self.format = bits, group_size, fmt
        self._n, self._k = n, k
        self.signed = symmetric and not codebook
        groups = 1 if group_size is None else k // group_size
        store = torch.int8 if (self.signed and bits > 4) else torch.uint8
        self.register_buffer("qweight", torch.zeros(packed_shape(n, k, bits), dtype=store, device=device))
        self.register_buffer("scale", torch.ones(n, groups, dtype=scale_dtype, device=device))
        self.register_buffer("zero", None if symmetric or codebook else
                             torch.zeros(n, groups, dtype=scale_dtype, device=device))
        cb_shape = {True: (2 ** bits,), "tensor": (2 ** bits,), "channel": (n, 2 ** bits),
                    "group": (n, groups, 2 ** bits)}
        if codebook and codebook not in cb_shape:
            raise ValueError(f"codebook must be False, True, 'tensor', 'channel' or 'group', got {codebook!r}")
        self.register_buffer("codebook", torch.zeros(cb_shape[codebook], device=device) if codebook else None)
        self._cache: dict = {}

    def _load_from_state_dict(self, *args, **kwargs):
        # a method, not a hook closure over self: a closure would survive copy.deepcopy still pointing at the
        # original module, and the copy would keep serving layouts of its old codes after load_state_dict
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # the cache is derived and process-local (oneDNN's packed weights cannot even be copied or pickled):
        # copies and pickles start without it and rebuild it on first use
        return {**self.__dict__, "_cache": {}}

    def __setstate__(self, state):
        super().__setstate__(state)
        # an unpickled quantized model may name leanformer's attention implementation in its config, which a
        # fresh process has not registered with transformers yet (a KeyError on the first forward otherwise);
        # transformers is imported by then, for the model's own class
        if "transformers" in sys.modules:
            from .attention import register_attention

            register_attention()

    # -- storage <-> QuantizedWeight
    def set_quantized(self, qw: QuantizedWeight) -> None:
        n, k = self._n, self._k
        codes = qw.codes.reshape(n, k)
        if qw.bits != self.bits or qw.group_size != self.group_size:
            raise ValueError(f"QuantizedWeight (bits={qw.bits}, group_size={qw.group_size}) does not match module "
                             f"(bits={self.bits}, group_size={self.group_size})")
        if (qw.zero is None) != (self.zero is None) or (qw.codebook is None) != (self.codebook is None):
            raise ValueError("QuantizedWeight symmetric/codebook kind does not match the module")
        self.qweight.copy_(pack_codes(codes, self.bits, signed=self.signed))
        self.scale.copy_(qw.scale)
        if self.zero is not None:
            self.zero.copy_(qw.zero)
        if self.codebook is not None:
            self.codebook.copy_(qw.codebook)
        self._cache.clear()

    def raw_nibbles(self) -> torch.Tensor:
        """(N, K) uint8 stored values 0..15 (signed codes + 8), for ``bits <= 4``."""
        return unpack_codes(self.qweight, self._k, self.bits, signed=False)

    def unpacked_codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, self._k, self.bits, signed=self.signed)  # (N, K)

    def quantized_weight(self) -> QuantizedWeight:
        codes = self.unpacked_codes().view(getattr(self, "weight_shape", (self._n, self._k)))
        return QuantizedWeight(codes, self.scale, self.zero, self.bits, self.group_size,
                               self.codebook, self.format)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) float weight; computed directly in ``dtype`` from the packed codes (the batch path)."""
        n, k = self._n, self._k
        gs = k if self.group_size is None else self.group_size
        if self.codebook is not None:
            fused = self._native_codebook_dequant(gs, dtype)
            if fused is not None:
                return fused
            vals = lookup(self.codebook.to(dtype), self.unpacked_codes(), n, k // gs)  # (N, G, gs)
            return vals.mul_(self.scale.to(dtype).unsqueeze(-1)).view(n, k)
        if self.bits <= 4:  # raw nibbles 0..15; signed codes carry an offset of 8 folded into the zero point
            if gs % 2 == 0 and get_policy().planar_cache:  # in-memory group-planar copy: ~3-4x faster unpack
                planar = self.kernel_cache("group_planar", lambda: group_planar(self.raw_nibbles(), gs))
                fused = self._native_dequant(planar, dtype)
                if fused is not None:
                    return fused
                vals = unpack_group_planar_to(planar, dtype)  # (N, G, gs)
            else:
                vals = unpack_nibbles_to(self.qweight, k, dtype).view(n, k // gs, gs)
            offset = NIBBLE_OFFSET if self.signed else 0
        else:
            vals = self.qweight.to(dtype).view(n, k // gs, gs)  # (N, G, gs), fresh: safe to update in place
            offset = 0
        if self.zero is not None:
            vals.sub_(self.kernel_cache(("zero", dtype), lambda: self.zero.to(dtype).unsqueeze(-1)))
        elif offset:
            vals.sub_(offset)
        # in-place broadcast ops: ~6x faster than addcmul with broadcast operands on CPU (measured)
        return vals.mul_(self.kernel_cache(("scale", dtype), lambda: self.scale.to(dtype).unsqueeze(-1))).view(n, k)

    def _native_dequant(self, planar: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The unpack / zero / scale passes below fused into one (native.py; bit-identical), or None."""
        # groups under 64 codes leave the vector loop too short (GCC's bf16 loop is 32 wide): 2.5x slower than
        # eager at g32 (measured), so those stay on the eager path
        if dtype not in (torch.float32, torch.bfloat16) or planar.shape[-1] < 32:
            return None
        ops = native_ops_for(planar)
        if ops is None:
            return None
        scale = self.kernel_cache(("scale", dtype), lambda: self.scale.to(dtype).unsqueeze(-1)).squeeze(-1)
        zero = (self.kernel_cache(("zero", dtype), lambda: self.zero.to(dtype).unsqueeze(-1)).squeeze(-1)
                if self.zero is not None else torch.empty(0, dtype=dtype))
        offset = NIBBLE_OFFSET if self.signed else 0  # signed codes never carry a zero point
        return ops.dequant_int4_planar(planar, scale, zero, float(offset)).view(self._n, self._k)

    def _native_codebook_dequant(self, gs: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The codebook lookup and scale in one native pass over group-planar codes (bit-identical), or None."""
        if (dtype not in (torch.float32, torch.bfloat16) or self.bits > 4 or gs % 2 or self.codebook.shape[-1] > 16
                or not get_policy().planar_cache):
            return None
        ops = native_ops_for(self.qweight)
        if ops is None:
            return None
        groups = self._k // gs
        planar = self.kernel_cache("group_planar", lambda: group_planar(self.raw_nibbles(), gs))
        table, ids = self.kernel_cache(("codebook_rows", dtype), lambda: _codebook_rows(self, groups, dtype))
        scale = self.kernel_cache(("scale_rows", dtype), lambda: self.scale.to(dtype).float().contiguous())
        return ops.dequant_codebook_planar(planar, table, ids, scale, dtype == torch.bfloat16).view(self._n, self._k)

    def kernel_cache(self, key, build):
        """Derived tensors (kernel layouts, scales in the compute dtype), built once; cleared when the
        state dict is loaded or ``set_quantized`` runs."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # .to(device) / .cuda() would leave cached layouts on the old device
        return super()._apply(fn, *args, **kwargs)

    def _storage_extra_repr(self) -> str:
        kind = "codebook" if self.codebook is not None else ("sym" if self.zero is None else "asym")
        return f"bits={self.bits}, group_size={self.group_size}, {kind}, format={self.format}"

    def spec(self) -> dict:
        """Everything needed to rebuild an empty module of the same layout (for serialization)."""
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.zero is None,
                "codebook": _codebook_kind(self.codebook), "scale_dtype": str(self.scale.dtype).replace("torch.", ""),
                "format": self.format}


class QuantizedLinear(_PackedWeightMixin):
    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, bits: int = 4,
                 group_size: int | None = None, symmetric: bool = True, codebook: bool = False,
                 act_bits: int | None = None, scale_dtype: torch.dtype = torch.float16, fmt: str = "int",
                 activation: str | None = None, prepare_output: bool = False, device=None) -> None:
        super().__init__()
        if act_bits not in (None, 8):
            raise ValueError(f"act_bits must be None or 8, got {act_bits!r}")
        if activation not in FUSABLE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {FUSABLE_ACTIVATIONS}, got {activation!r}")
        # set by fusion.fuse_feed_forward_: the layer applies its parent's activation itself (inside the AMX
        # kernels where they run), and hands the next quantized layer its input already prepared
        self.activation, self.prepare_output = activation, prepare_output
        if act_bits == 8 and codebook:
            raise ValueError("int8 activations (act_bits=8) need integer codes, not a codebook")
        if act_bits == 8 and bits == 8 and not (symmetric and group_size is None):
            raise ValueError("W8A8 needs 8-bit symmetric per-channel weights")
        if act_bits == 8 and bits not in (4, 8):
            raise ValueError(f"int8 activations run with 8-bit (W8A8) or 4-bit (W4A8) weights, got bits={bits}")
        self.in_features, self.out_features, self.act_bits = in_features, out_features, act_bits
        self._init_storage(out_features, in_features, bits=bits, group_size=group_size, symmetric=symmetric,
                           codebook=codebook, scale_dtype=scale_dtype, fmt=fmt, device=device)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, qw: QuantizedWeight, *, act_bits: int | None = None) -> "QuantizedLinear":
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=qw.bits,
                  group_size=qw.group_size, symmetric=qw.zero is None, codebook=_codebook_kind(qw.codebook),
                  act_bits=act_bits, scale_dtype=qw.scale.dtype, fmt=qw.format, device=linear.weight.device)
        mod.set_quantized(qw)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        return mod

    def spec(self) -> dict:
        extra = {"activation": self.activation} if self.activation else {}  # absent keys: files before fusion
        if self.prepare_output:
            extra["prepare_output"] = True
        return {**super().spec(), "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "act_bits": self.act_bits, **extra}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantizedLinear":
        return cls(spec["in_features"], spec["out_features"], bias=spec["bias"], bits=spec["bits"],
                   group_size=spec["group_size"], symmetric=spec["symmetric"], codebook=spec["codebook"],
                   act_bits=spec["act_bits"], scale_dtype=getattr(torch, spec["scale_dtype"]), fmt=spec["format"],
                   activation=spec.get("activation"), prepare_output=spec.get("prepare_output", False))

    def forward(self, x: torch.Tensor, *, kernel: str | None = None) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"QuantizedLinear expects a floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear expects last dim {self.in_features}, got {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        name = kernel or choose_kernel(self, x2.shape[0], x2)
        y = run_kernel(name, self, x2, self.bias, x.dtype, activation=self.activation,
                       prepare_output=self.prepare_output)  # (M, N)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = ", act_bits=8" if self.act_bits else ""
        act += f", activation={self.activation}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._storage_extra_repr()}{act}"


class QuantizedConv2d(_PackedWeightMixin):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, bits: int = 4, group_size: int | None = None,
                 symmetric: bool = True, codebook: bool = False, scale_dtype: torch.dtype = torch.float16,
                 fmt: str = "int", device=None) -> None:
        super().__init__()
        ks = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ks
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        k = in_channels // groups * ks[0] * ks[1]
        self.weight_shape = (out_channels, in_channels // groups, *ks)
        self._init_storage(out_channels, k, bits=bits, group_size=group_size, symmetric=symmetric,
                           codebook=codebook, scale_dtype=scale_dtype, fmt=fmt, device=device)
        self.register_buffer("bias", torch.zeros(out_channels, device=device) if bias else None)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, qw: QuantizedWeight) -> "QuantizedConv2d":
        if not isinstance(conv.padding, (int, tuple)) or conv.padding_mode != "zeros":
            raise ValueError("QuantizedConv2d supports numeric padding with padding_mode='zeros' only")
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, bits=qw.bits,
                  group_size=qw.group_size, symmetric=qw.zero is None, codebook=_codebook_kind(qw.codebook),
                  scale_dtype=qw.scale.dtype, fmt=qw.format, device=conv.weight.device)
        mod.set_quantized(qw)
        if conv.bias is not None:
            mod.bias.copy_(conv.bias.detach().float())
        return mod

    def spec(self) -> dict:
        return {**super().spec(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": _plain(self.stride), "padding": _plain(self.padding),
                "dilation": _plain(self.dilation), "groups": self.groups, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantizedConv2d":
        tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        return cls(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), stride=tup(spec["stride"]),
                   padding=tup(spec["padding"]), dilation=tup(spec["dilation"]), groups=spec["groups"],
                   bias=spec["bias"], bits=spec["bits"], group_size=spec["group_size"], symmetric=spec["symmetric"],
                   codebook=spec["codebook"], scale_dtype=getattr(torch, spec["scale_dtype"]), fmt=spec["format"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight(x.dtype).view(self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {self._storage_extra_repr()}"


class QuantizedEmbedding(_PackedWeightMixin):
    def __init__(self, num_embeddings: int, embedding_dim: int, *, padding_idx: int | None = None, bits: int = 8,
                 group_size: int | None = None, symmetric: bool = True, scale_dtype: torch.dtype = torch.float16,
                 fmt: str = "int", device=None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.out_dtype = torch.float32  # what forward returns; set_activation_dtype_ changes it
        self._init_storage(num_embeddings, embedding_dim, bits=bits, group_size=group_size, symmetric=symmetric,
                           codebook=False, scale_dtype=scale_dtype, fmt=fmt, device=device)

    @classmethod
    def from_float(cls, emb: nn.Embedding, qw: QuantizedWeight) -> "QuantizedEmbedding":
        if emb.max_norm is not None or emb.sparse:
            raise ValueError("QuantizedEmbedding does not support max_norm or sparse embeddings")
        mod = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, bits=qw.bits,
                  group_size=qw.group_size, symmetric=qw.zero is None, scale_dtype=qw.scale.dtype, fmt=qw.format,
                  device=emb.weight.device)
        mod.set_quantized(qw)
        return mod

    def spec(self) -> dict:
        return {**super().spec(), "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "out_dtype": str(self.out_dtype).replace("torch.", "")}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantizedEmbedding":
        mod = cls(spec["num_embeddings"], spec["embedding_dim"], padding_idx=spec["padding_idx"], bits=spec["bits"],
                  group_size=spec["group_size"], symmetric=spec["symmetric"],
                  scale_dtype=getattr(torch, spec["scale_dtype"]), fmt=spec["format"])
        mod.out_dtype = getattr(torch, spec.get("out_dtype", "float32"))
        return mod

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ops = self._native_ops(ids)
        if ops is None:
            return self.forward_reference(ids)
        scale, zero = self.kernel_cache("embedding_rows", self._float_tables)
        out = ops.embedding_rows(self.qweight, scale, zero, ids.reshape(-1).contiguous())  # (T, K) float32
        return out.view(*ids.shape, self.embedding_dim).to(self.out_dtype)

    def _native_ops(self, ids: torch.Tensor):
        """The fused gather (``csrc/embedding_rows.cpp``, bit-identical) for 8-bit tables and int64 ids on CPU."""
        if self.bits <= 4 or ids.dtype != torch.int64 or self.qweight.device.type != "cpu":
            return None
        return native_ops_for(ids)  # None for ids on other devices

    def _float_tables(self):
        """(V, G) float32 scales and zero points (an empty tensor for symmetric tables), as the reference casts them."""
        zero = torch.empty(0) if self.zero is None else self.zero.float().contiguous()
        return self.scale.float().contiguous(), zero

    def forward_reference(self, ids: torch.Tensor) -> torch.Tensor:
        """The eager lookup: gather the codes, cast, subtract the zero points, scale."""
        flat = ids.reshape(-1)
        k, gs = self.embedding_dim, self.group_size or self.embedding_dim
        codes = unpack_codes(self.qweight[flat], k, self.bits, signed=self.signed).float()  # (T, K)
        vals = codes.view(-1, k // gs, gs)
        if self.zero is not None:
            vals = vals - self.zero[flat].float().unsqueeze(-1)
        out = vals * self.scale[flat].float().unsqueeze(-1)  # (T, G, gs)
        return out.view(*ids.shape, k).to(self.out_dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized (V, D) table, for code that reads ``embeddings.weight`` (e.g. tied heads)."""
        return self.dequantized_weight(torch.float32)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._storage_extra_repr()}"


def _codebook_rows(mod, groups: int, dtype: torch.dtype):
    """The distinct codebook rows (T, 16) in ``dtype`` and each (column, group)'s row (N, G) int32."""
    table, ids = codebook_tables(mod.codebook, mod._n, groups, dtype)
    return table, ids.t().contiguous()


def _codebook_kind(codebook: torch.Tensor | None):
    if codebook is None:
        return False
    return {1: "tensor", 2: "channel", 3: "group"}[codebook.dim()]


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class FusedActivation(nn.Module):
    """Stands where an activation was that the preceding ``QuantizedLinear`` now applies itself (fusion.py):
    the identity, kept as a module so that the model prints, saves and loads what it runs."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        if activation not in FUSABLE_ACTIVATIONS or activation is None:
            raise ValueError(f"activation must be one of {FUSABLE_ACTIVATIONS[1:]}, got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def spec(self) -> dict:
        return {"activation": self.activation}

    @classmethod
    def from_spec(cls, spec: dict) -> "FusedActivation":
        return cls(spec["activation"])

    def extra_repr(self) -> str:
        return f"{self.activation}, applied by the preceding QuantizedLinear"


from .residual_norm import FusedResidualNorm  # noqa: E402  (it needs only kernels.py, imported above)

QUANTIZED_MODULES = {"QuantizedLinear": QuantizedLinear, "QuantizedConv2d": QuantizedConv2d,
                     "QuantizedEmbedding": QuantizedEmbedding, "FusedActivation": FusedActivation,
                     "FusedResidualNorm": FusedResidualNorm}


def set_activation_dtype_(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Run the float remainder of a quantized model (LayerNorms, biases, embeddings' output) in ``dtype``.

    ``model.to(torch.bfloat16)`` would also cast the fp16 scales / zero points of the quantized modules
    (silently losing precision); this casts only the float modules' own tensors and tells quantized
    embeddings what to return. Quantized Linears follow their input's dtype by themselves.
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"activation dtype must be float32, bfloat16 or float16, got {dtype}")
    quantized = tuple(QUANTIZED_MODULES.values())
    for mod in model.modules():
        if isinstance(mod, QuantizedEmbedding):
            mod.out_dtype = dtype
        if isinstance(mod, quantized):
            continue
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                setattr(mod, name, b.to(dtype))
    return model
