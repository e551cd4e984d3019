"""SQuant and ANT against the plain baselines on all-MiniLM-L6-v2's Linear weights.

For each weight-quantization method at 4 bits (group 64 and per channel), this measures:
- the SQNR in dB of every Linear weight (``10 log10 |W|^2 / |W - deq(W)|^2``), as a mean, minimum and
  layer-by-layer wins;
- the sentence-embedding cosine against FP32 over 40 built-in sentences (mean-pooled, as
  sentence-transformers does), by fake-quant: each Linear weight replaced by its dequantized codes;
- the quantization time of all 37 Linear layers on one thread: wall clock, and the process CPU time, which
  is what a shared, overloaded machine distorts least.

Baselines:
- RTN symmetric max-abs and RTN asymmetric min/max (``quantize_rtn``, whose zero point is fractional);
- SQuant's own baseline, min/max with an integer zero point (``squant_quantize(mode="squant-e")``);
- the data-free MSE clip search of ``quantize_rtn``, symmetric and asymmetric (a grid over shrink factors,
  keeping the lowest squared error per group).

    python benchmarks/bench_squant_minilm.py [--quick]

Writes ``benchmarks/results/squant_minilm.csv``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows  # noqa: E402

from leanformer.quant.ant import ant_quantize  # noqa: E402
from leanformer.quant.rtn import quantize_rtn  # noqa: E402
from leanformer.quant.squant import squant_quantize  # noqa: E402

METHODS = {
    "rtn-sym": lambda w, g: quantize_rtn(w, bits=4, group_size=g, symmetric=True),
    "rtn-sym-mse-clip": lambda w, g: quantize_rtn(w, bits=4, group_size=g, symmetric=True, clip_search=True),
    "rtn-asym": lambda w, g: quantize_rtn(w, bits=4, group_size=g, symmetric=False),
    "rtn-asym-mse-clip": lambda w, g: quantize_rtn(w, bits=4, group_size=g, symmetric=False, clip_search=True),
    # SQuant's own baseline: RTN with the official min/max scale and an integer zero point (mode squant-e).
    "rtn-asym-int-zero": lambda w, g: squant_quantize(w, bits=4, group_size=g, symmetric=False, mode="squant-e"),
    "squant-sym": lambda w, g: squant_quantize(w, bits=4, group_size=g, symmetric=True),
    "squant-asym": lambda w, g: squant_quantize(w, bits=4, group_size=g, symmetric=False),
    "ant-tensor": lambda w, g: ant_quantize(w, bits=4, group_size=g, granularity="tensor"),
    "ant-channel": lambda w, g: ant_quantize(w, bits=4, group_size=g, granularity="channel"),
}


def sqnr_db(w: torch.Tensor, deq: torch.Tensor) -> float:
    return float(10 * torch.log10(w.float().pow(2).sum() / (w.float() - deq).pow(2).sum().clamp_min(1e-30)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="group 64 only, fewer methods")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from leanformer.models import build_model, minilm_dir
    from leanformer.quant.fidelity import SENTENCES, compare, embed

    model = build_model("minilm", task="base").eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    originals = {n: m.weight.detach().clone() for n, m in linears}
    with torch.no_grad():
        ref = embed(model, tok, SENTENCES)
    rows = Rows("squant_minilm")
    groups = [64] if args.quick else [64, None]
    methods = METHODS if not args.quick else {k: METHODS[k] for k in ("rtn-sym", "rtn-asym-mse-clip", "squant-sym",
                                                                      "ant-tensor")}
    for g in groups:
        gname = f"g{g}" if g else "per-channel"
        sqnr: dict[str, list[float]] = {}
        print(f"\n== 4-bit {gname}: {len(linears)} Linear layers of all-MiniLM-L6-v2 ==")
        results = {}
        for name, method in methods.items():
            t0, c0 = time.perf_counter(), time.process_time()
            qws = {n: method(originals[n], g) for n, _ in linears}
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            sqnr[name] = [sqnr_db(originals[n], qws[n].dequantize()) for n, _ in linears]
            with torch.no_grad():
                for n, m in linears:
                    m.weight.copy_(qws[n].dequantize())
                fid = compare(ref, embed(model, tok, SENTENCES))
                for n, m in linears:
                    m.weight.copy_(originals[n])
            fmts = [q.format for q in qws.values()]
            results[name] = (fid, seconds, cpu_seconds, {f: fmts.count(f) for f in sorted(set(fmts))})
        print(f"{'method':20s} {'SQNR mean':>9s} {'min':>6s} {'>rtn-sym':>8s} {'>asym-mse':>9s} "
              f"{'cos mean':>8s} {'cos worst':>9s} {'NN':>5s} {'wall s':>7s} {'cpu s':>6s}  formats")
        for name, (fid, seconds, cpu_seconds, types) in results.items():
            beats = lambda base: sum(a > b for a, b in zip(sqnr[name], sqnr.get(base, sqnr[name])))  # noqa: E731
            print(f"{name:20s} {statistics.mean(sqnr[name]):9.2f} {min(sqnr[name]):6.2f} "
                  f"{beats('rtn-sym'):5d}/{len(linears)} {beats('rtn-asym-mse-clip'):6d}/{len(linears)} "
                  f"{fid.mean_cos:8.4f} {fid.worst_cos:9.4f} {fid.nn_agreement:5.2f} {seconds:7.2f} "
                  f"{cpu_seconds:6.2f}  {types}")
            config = {"bits": 4, "group_size": g, "threads": args.threads, "sentences": len(SENTENCES)}
            rows.add("minilm_linear", name, "sqnr_mean", "dB", statistics.mean(sqnr[name]), x_name="group",
                     x_value=gname, p20=min(sqnr[name]), p80=max(sqnr[name]), config=config)
            rows.add("minilm_linear", name, "cos_mean", "cosine", fid.mean_cos, x_name="group", x_value=gname,
                     p20=fid.worst_cos, config=config)
            rows.add("minilm_linear", name, "nn_agreement", "fraction", fid.nn_agreement, x_name="group",
                     x_value=gname, config=config)
            rows.add("minilm_linear", name, "quant_time", "s", seconds, x_name="group", x_value=gname, config=config)
            rows.add("minilm_linear", name, "quant_cpu_time", "s", cpu_seconds, x_name="group", x_value=gname,
                     config=config)
            for (n, _), db in zip(linears, sqnr[name]):
                rows.add("minilm_layer", name, "sqnr", "dB", db, x_name=n, x_value=gname, config=config)
    print("wrote", rows.write())


if __name__ == "__main__":
    main()
