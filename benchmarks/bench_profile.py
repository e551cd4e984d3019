"""Saved-for-backward bytes per layer and per model for the stock zoo, measured with `leanformer profile`.

Each configuration runs `python -m leanformer profile ... --json` in its own process, one at a time (the big
ones hold several GB), and keeps the JSON in benchmarks/results/profile_<model>_<attn>[_<variant>].json.
Then this script writes benchmarks/results/profile.csv (long format, benchmarks/_harness.py), prints a markdown
table (the one in docs/profile.md) and draws a stacked-bar chart (benchmarks/results/profile_models.png).

    python benchmarks/bench_profile.py            # b8 s512 fp32, eager and sdpa, all four models (long: ~15 min)
    python benchmarks/bench_profile.py --quick    # 1 layer, b2 s128: a smoke test of the whole pipeline
    python benchmarks/bench_profile.py --tables-only   # rebuild CSV/table/plot from the kept JSON files
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import RESULTS, Rows  # noqa: E402

from leanformer.profile import KINDS, StepMemoryReport  # noqa: E402

MIB = 1024 * 1024
# (model, attn, variant, extra CLI args). "nodrop": attention-probability dropout off, so CPU SDPA runs its
# fused flash kernel instead of the math fallback, which is what CUDA's fused kernels save (actmem.md sec. 4).
CONFIGS = [
    ("minilm", "eager", "", []), ("minilm", "sdpa", "", []),
    ("bert-base", "eager", "", []), ("bert-base", "sdpa", "", []),
    ("bert-base", "sdpa", "nodrop", ["--set", "attention_probs_dropout_prob=0"]),
    ("gpt2", "eager", "", []), ("gpt2", "sdpa", "", []),
    ("gpt2", "sdpa", "nodrop", ["--set", "attn_pdrop=0"]),
    ("llama-small", "eager", "", []), ("llama-small", "sdpa", "", []),
]


def _json_path(model: str, attn: str, variant: str, quick: bool) -> Path:
    stem = "_".join(x for x in ("profile", "quick" if quick else "", model, attn, variant) if x)
    return RESULTS / f"{stem}.json"


def run_all(quick: bool, only: str | None) -> None:
    batch, seq = (2, 128) if quick else (8, 512)
    for model, attn, variant, extra in CONFIGS:
        if only and only not in (model, f"{model}_{attn}", f"{model}_{attn}_{variant}"):
            continue
        cmd = [sys.executable, "-m", "leanformer", "profile", "--model", model, "--attn", attn,
               "--batch", str(batch), "--seq", str(seq), "--json", *extra]
        if quick:
            cmd += ["--layers", "1"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"FAILED {model} {attn} {variant}: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        report = StepMemoryReport.from_json(proc.stdout)
        report.meta["variant"] = variant or "stock"
        _json_path(model, attn, variant, quick).write_text(report.to_json() + "\n")
        print(f"{model:>12} {attn:>5} {variant:>6}: layer {report.mean_layer_bytes() / MIB:8.1f} MiB, "
              f"model {report.saved_activation_bytes / MIB:9.1f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)


def load_reports(quick: bool) -> dict[str, StepMemoryReport]:
    out = {}
    for model, attn, variant, _ in CONFIGS:
        path = _json_path(model, attn, variant, quick)
        if path.exists():
            out[" ".join(x for x in (model, attn, variant) if x)] = StepMemoryReport.from_json(path.read_text())
    return out


def write_tables(reports: dict[str, StepMemoryReport], quick: bool) -> None:
    if not reports:
        print("no results to tabulate")
        return
    rows = Rows("profile")
    head = ("| config | layers | saved / layer (MiB) | matmul in | norm | act fn | softmax/attn | dropout mask "
            "| other | saved, whole model (MiB) | params+grads+AdamW (MiB) | step wall (s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in reports.items():
        layers = r.repeated_layers()
        per_kind = {k: sum(r.by_layer_kind().get(n, {}).get(k, 0) for n in layers) / max(len(layers), 1) for k in KINDS}
        state = r.params_bytes + r.grads_bytes + r.optimizer_state_bytes
        lines.append(f"| {name} | {len(layers)} | **{r.mean_layer_bytes() / MIB:.1f}** | "
                     + " | ".join(f"{per_kind[k] / MIB:.1f}" for k in ("matmul_input", "norm", "activation",
                                                                        "softmax_attention", "dropout_mask", "other"))
                     + f" | **{r.saved_activation_bytes / MIB:.1f}** | {state / MIB:.1f} | {r.wall_time_s:.1f} |")
        cfg = dict(r.meta)
        rows.add("train_step", name, "saved_bytes_per_layer", "MiB", round(r.mean_layer_bytes() / MIB, 2), config=cfg)
        rows.add("train_step", name, "saved_bytes_model", "MiB", round(r.saved_activation_bytes / MIB, 2), config=cfg)
        rows.add("train_step", name, "state_bytes", "MiB", round(state / MIB, 2), config=cfg)
        rows.add("train_step", name, "wall_time", "s", round(r.wall_time_s, 3), config=cfg)
    suffix = "_quick" if quick else ""
    table = "\n".join(lines)
    rows.write(f"profile{suffix}")
    print(table)
    try:
        from leanformer.profile import plot_reports

        path = plot_reports(reports, RESULTS / f"profile{suffix}_models.png", overwrite=True)
        print(f"wrote {path}")
    except ImportError as exc:
        print(f"no plot: {exc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 layer, batch 2, seq 128")
    ap.add_argument("--tables-only", action="store_true", help="only rebuild CSV/table/plot from kept JSON")
    ap.add_argument("--only", default=None, help="run one model (or model_attn, model_attn_variant)")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.tables_only:
        run_all(args.quick, args.only)
    write_tables(load_reports(args.quick), args.quick)


if __name__ == "__main__":
    main()
