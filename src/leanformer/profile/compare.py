"""Side-by-side text table of several ``StepMemoryReport``s, with each column's ratio to the first."""
from __future__ import annotations

from .kinds import KIND_LABELS, KINDS
from .report import MIB, StepMemoryReport


def compare_table(reports: dict[str, StepMemoryReport]) -> str:
    """Rows: step totals, saved bytes by kind, mean numbered layer; one MiB column per report, then
    ``<name>/<first>`` ratios so a patched model reads as e.g. ``0.52x`` of stock."""
    if not reports:
        raise ValueError("compare_table needs at least one report")
    names = list(reports)
    reps = list(reports.values())
    # (label, values, divisor, format): bytes print in MiB, the wall time in seconds
    rows: list[tuple[str, list[float], float, str]] = [
        ("parameters", [r.params_bytes for r in reps], MIB, ",.1f"),
        ("gradients", [r.grads_bytes for r in reps], MIB, ",.1f"),
        ("optimizer state", [r.optimizer_state_bytes for r in reps], MIB, ",.1f"),
        ("saved for backward", [r.saved_activation_bytes for r in reps], MIB, ",.1f"),
    ]
    rows += [(f"  {KIND_LABELS[k]}", [r.by_kind.get(k, 0) for r in reps], MIB, ",.1f") for k in KINDS]
    rows += [("saved, mean layer", [r.mean_layer_bytes() for r in reps], MIB, ",.1f"),
             ("total (peak lower bound)", [r.total_bytes for r in reps], MIB, ",.1f"),
             ("wall time (s)", [r.wall_time_s for r in reps], 1.0, ".2f")]
    head = f"{'MiB':<26}" + "".join(f"{n:>14}" for n in names)
    head += "".join(f"{n + '/' + names[0]:>16}" for n in names[1:])
    lines = [head, "-" * len(head)]
    for label, values, div, fmt in rows:
        line = f"{label:<26}" + "".join(f"{v / div:>14{fmt}}" for v in values)
        for v in values[1:]:
            line += f"{v / values[0]:>15.2f}x" if values[0] else f"{'-':>16}"
        lines.append(line)
    return "\n".join(lines)
