"""Stacked-bar PNG comparing several ``StepMemoryReport``s (matplotlib is imported only when plotting)."""
from __future__ import annotations

import os
from pathlib import Path

from .kinds import KIND_LABELS, KINDS
from .report import MIB, StepMemoryReport

_STATE = (("params_bytes", "parameters", "#4c72b0"), ("grads_bytes", "gradients", "#8172b2"),
          ("optimizer_state_bytes", "optimizer state", "#64b5cd"))
_KIND_COLORS = {"matmul_input": "#dd8452", "norm": "#55a868", "activation": "#c44e52",
                "softmax_attention": "#937860", "dropout_mask": "#da8bc3", "other": "#8c8c8c"}


def _mean_layer_kinds(report: StepMemoryReport) -> dict[str, float]:
    layers = report.repeated_layers()
    per = report.by_layer_kind()
    if not layers:
        return {}
    return {k: sum(per.get(name, {}).get(k, 0) for name in layers) / len(layers) for k in KINDS}


def plot_reports(reports: dict[str, StepMemoryReport], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a PNG with one bar per report: left, the whole step (state + saved activations by kind);
    right, the saved activations of the mean numbered layer by kind. Returns the path written."""
    if not reports:
        raise ValueError("plot_reports needs at least one report")
    for name, rep in reports.items():
        if not isinstance(rep, StepMemoryReport):
            raise TypeError(f"reports[{name!r}] is a {type(rep).__name__}, not a StepMemoryReport")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(path)!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: refusing to overwrite it (pass overwrite=True)")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_reports needs matplotlib: pip install matplotlib") from exc

    names = list(reports)
    fig, (ax_step, ax_layer) = plt.subplots(1, 2, figsize=(3 + 1.5 * len(names), 5))
    bottoms = [0.0] * len(names)

    def stack(ax, label, values, color):
        ax.bar(names, values, bottom=list(bottoms), label=label, color=color)
        for i, v in enumerate(values):
            bottoms[i] += v

    for field, label, color in _STATE:
        stack(ax_step, label, [getattr(reports[n], field) / MIB for n in names], color)
    for kind in KINDS:
        stack(ax_step, f"saved: {KIND_LABELS[kind]}", [reports[n].by_kind.get(kind, 0) / MIB for n in names],
              _KIND_COLORS[kind])
    ax_step.set_title("whole training step")
    ax_step.set_ylabel("MiB")
    bottoms = [0.0] * len(names)
    layer_kinds = {n: _mean_layer_kinds(reports[n]) for n in names}
    for kind in KINDS:
        stack(ax_layer, KIND_LABELS[kind], [layer_kinds[n].get(kind, 0.0) / MIB for n in names], _KIND_COLORS[kind])
    ax_layer.set_title("saved for backward, mean layer")
    for ax in (ax_step, ax_layer):
        ax.tick_params(axis="x", rotation=30)
        plt.setp(ax.get_xticklabels(), ha="right")
    handles, labels = ax_step.get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight" keeps the legend outside the axes in the file
    plt.close(fig)
    return path
