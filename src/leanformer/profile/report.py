"""``StepMemoryReport``: the memory picture of one training step, as a table, as JSON, grouped by layer."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from .kinds import KIND_LABELS, KINDS

MIB = 1024 * 1024
_LAYER = re.compile(r"^((?:.*?\.)?\d+)(?:\.|$)")  # "bert.encoder.layer.3.attention" -> "bert.encoder.layer.3"
_VERSION = 1


def fmt_bytes(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


def layer_of(module_name: str) -> str:
    """The top-level block a module belongs to: the name up to its first numeric component (a ModuleList
    index), or the name itself for modules outside any list (embeddings, final norm, head)."""
    m = _LAYER.match(module_name)
    return m.group(1) if m else module_name


@dataclasses.dataclass
class StepMemoryReport:
    """Bytes used by one training step. All ``*_bytes`` values and dict values are bytes (int).

    ``by_module`` maps a module's qualified name ("" is the root model, ``"(outside model)"`` the loss
    function) to the bytes saved for backward while it was the innermost running module; ``by_kind`` maps
    each of ``KINDS`` to bytes; ``by_module_kind`` is the same split per module. Each saved storage is
    counted once, so the values of ``by_module`` (and of ``by_kind``) sum to ``saved_activation_bytes``.
    """

    params_bytes: int
    grads_bytes: int
    optimizer_state_bytes: int
    saved_activation_bytes: int
    by_module: dict[str, int]
    by_kind: dict[str, int]
    by_module_kind: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    saved_tensor_count: int = 0  # unique storages counted
    wall_time_s: float = 0.0  # forward + backward (+ optimizer step), profiling hooks included
    device_peak_bytes: int | None = None  # CUDA max_memory_allocated during the step; None on CPU
    model: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # free-form: batch, seq, dtype, attn, ...
    notes: list[str] = dataclasses.field(default_factory=list)

    # -- derived views -------------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        """Parameters + gradients + optimizer state + saved activations: everything alive at the end of
        the forward of a step after the first. A lower bound on the step's peak, which also holds the
        transient buffers of the op running at the peak (the largest is usually the logits' gradient)."""
        return self.params_bytes + self.grads_bytes + self.optimizer_state_bytes + self.saved_activation_bytes

    def by_layer(self) -> dict[str, int]:
        """``by_module`` summed per top-level block (``...layer.0``, ``...layer.1``, ...), in first-seen order."""
        out: dict[str, int] = {}
        for name, nbytes in self.by_module.items():
            key = layer_of(name)
            out[key] = out.get(key, 0) + nbytes
        return out

    def by_layer_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, kinds in self.by_module_kind.items():
            acc = out.setdefault(layer_of(name), {})
            for kind, nbytes in kinds.items():
                acc[kind] = acc.get(kind, 0) + nbytes
        return out

    def repeated_layers(self) -> dict[str, int]:
        """Only the numbered blocks (the transformer layers) of ``by_layer``."""
        return {k: v for k, v in self.by_layer().items() if _LAYER.match(k + ".")}

    def mean_layer_bytes(self) -> float:
        layers = self.repeated_layers()
        return sum(layers.values()) / len(layers) if layers else 0.0

    # -- text -----------------------------------------------------------------------------------------
    def table(self, *, top: int = 12) -> str:
        """A readable breakdown: totals, kinds, layers, then the ``top`` heaviest modules."""
        total = self.saved_activation_bytes or 1
        title = self.model or "model"
        if self.meta:
            title += "  (" + ", ".join(f"{k}={v}" for k, v in self.meta.items()) + ")"
        lines = [f"Step memory: {title}", f"  wall time of the profiled step: {self.wall_time_s:.2f} s", ""]
        rows = [("parameters", self.params_bytes), ("gradients", self.grads_bytes),
                ("optimizer state", self.optimizer_state_bytes), ("saved for backward", self.saved_activation_bytes),
                ("total (peak lower bound)", self.total_bytes)]
        if self.device_peak_bytes is not None:
            rows.append(("device peak (measured)", self.device_peak_bytes))
        lines += [f"  {label:<28}{fmt_bytes(v):>14}" for label, v in rows]
        lines += ["", f"Saved for backward by kind ({self.saved_tensor_count} storages):"]
        for kind in KINDS:
            v = self.by_kind.get(kind, 0)
            lines.append(f"  {KIND_LABELS[kind]:<28}{fmt_bytes(v):>14}{100 * v / total:>7.1f}%")
        lines += ["", "Saved for backward by layer:"]
        for name, v in self.by_layer().items():
            lines.append(f"  {name or '(model)':<40}{fmt_bytes(v):>14}{100 * v / total:>7.1f}%")
        layers = self.repeated_layers()
        if layers:
            lines.append(f"  {'mean per numbered layer':<40}{fmt_bytes(self.mean_layer_bytes()):>14}")
        heavy = sorted(self.by_module.items(), key=lambda kv: -kv[1])[:top]
        lines += ["", f"Heaviest modules (top {len(heavy)}):"]
        lines += [f"  {name or '(model)':<52}{fmt_bytes(v):>14}" for name, v in heavy]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    # -- JSON -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["version"] = _VERSION
        out["total_bytes"] = self.total_bytes  # derived, for readers; ignored by from_dict
        out["by_layer"] = self.by_layer()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepMemoryReport":
        data = dict(data)
        version = data.pop("version", _VERSION)
        if version > _VERSION:
            raise ValueError(f"StepMemoryReport version {version} is newer than this leanformer understands")
        for derived in ("total_bytes", "by_layer"):
            data.pop(derived, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown StepMemoryReport fields: {sorted(unknown)}")
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING} - set(data)
        if missing:
            raise ValueError(f"StepMemoryReport JSON lacks fields: {sorted(missing)}")
        return cls(**data)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "StepMemoryReport":
        return cls.from_dict(json.loads(text))
