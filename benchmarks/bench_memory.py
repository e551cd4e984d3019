"""Bytes saved for backward, per layer and per whole model: stock eager, stock SDPA, leanformer (flash / tempo).

    python benchmarks/bench_memory.py [--quick] [--threads N]

Per layer: a 3-layer bare model (no LM head) of each config (BERT-base, GPT-2, llama-small) at batch 8, seq 512, fp32, training
mode with the architectures' dropout on; the middle layer's bytes (steady state, parameters excluded) against
the exact minimum recomputed from the shapes (``leanformer.patch.minimum``). Whole model: all 12 layers, at a
smaller batch (saved bytes are linear in the batch), giving the largest batch whose saved activations fit a
fixed byte budget. Step time: forward + backward of the 3-layer model, providers interleaved in one process,
at batch 2, median of process CPU time over the repetitions (one torch thread by default: the machines here are shared),
ratio lean / stock. Writes benchmarks/results/memory.csv.

CPU notes: stock ``F.dropout`` on CPU saves an fp32 mask (CUDA: 1 byte), and CPU SDPA with dropout falls back
to the math kernel, so "stock SDPA" here is the CPU default, not CUDA's fused kernel.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows  # noqa: E402

import leanformer  # noqa: E402
from leanformer.models import build_model  # noqa: E402
from leanformer.patch.minimum import (LayerShape, decoder_layers, exact_minimum_bytes,  # noqa: E402
                                      saved_bytes_by_layer)

MiB = 2 ** 20
MODELS = {"bert-base": "bert", "gpt2": "gpt2", "llama-small": "llama"}
PROVIDERS = ("stock-eager", "stock-sdpa", "lean", "lean-tempo")


def layers_kw(name: str, n: int) -> dict:
    return {"n_layer": n} if name == "gpt2" else {"num_hidden_layers": n}


def build(name: str, provider: str, n_layers: int, task: str = "lm"):
    attn = "eager" if provider == "stock-eager" else "sdpa"
    model = build_model(name, task=task, attn_implementation=attn, **layers_kw(name, n_layers)).train()
    if provider.startswith("lean"):
        mode = "tempo" if provider == "lean-tempo" else "auto"
        leanformer.patch_(model, leanformer.LeanConfig(attention=mode))
    return model


def batch_for(model, batch: int, seq: int, labels: bool = True) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    out = {"input_ids": ids, "labels": ids} if labels else {"input_ids": ids}
    if model.config.model_type != "bert":
        out["use_cache"] = False
    return out


def step(model, data) -> None:
    """Forward + backward of the bare layer stack (no LM head, which is the same for every provider)."""
    model.zero_grad(set_to_none=True)
    model(**data).last_hidden_state.square().mean().backward()


def per_layer(name, batch, seq, time_batch, reps, rows, table):
    cfg = {"model": name, "batch": batch, "seq": seq, "dtype": "float32", "layers": 3}
    saved = {}
    for p in PROVIDERS:  # one model alive at a time: the stock eager forward alone holds GBs at batch 8
        m = build(name, p, 3, task="base")
        data = batch_for(m, batch, seq, labels=False)
        saved[p] = saved_bytes_by_layer(m, decoder_layers(m), **data)[0][1]
        shape = LayerShape.from_config(m.config, batch, seq)
        del m, data
        gc.collect()
    floor = {v: sum(exact_minimum_bytes(shape, v).values()) for v in ("eager", "fused")}
    models = {p: build(name, p, 3, task="base") for p in PROVIDERS}
    data = batch_for(models["stock-eager"], time_batch, seq, labels=False)
    tcfg = {**cfg, "batch": time_batch}
    times = {p: [] for p in PROVIDERS}
    for _ in range(reps + 1):  # first round is warm-up; providers interleaved against machine noise
        for p, m in models.items():
            # process CPU time: on a shared machine wall time mostly measures the neighbours
            t0 = time.process_time()
            step(m, data)
            times[p].append(time.process_time() - t0)
            m.zero_grad(set_to_none=True)
            gc.collect()
    base = statistics.median(times["stock-eager"][1:])
    base_sdpa = statistics.median(times["stock-sdpa"][1:])
    for p in PROVIDERS:
        ref = "eager" if p in ("stock-eager", "lean-tempo") else "fused"
        t = sorted(times[p][1:])
        med = statistics.median(t)
        rows.add("layer", p, "saved_bytes", "MiB", saved[p] / MiB, config=cfg)
        rows.add("layer", p, "ratio_to_minimum", "x", saved[p] / floor[ref], config={**cfg, "minimum": ref})
        rows.add("step_3_layers", p, "cpu_time", "s", med, p20=t[0], p80=t[-1], config=tcfg)
        rows.add("step_3_layers", p, "time_ratio_vs_stock_eager", "x", med / base, config=tcfg)
        table.append((name, p, saved[p] / MiB, floor[ref] / MiB, saved[p] / floor[ref], med, med / base,
                      med / base_sdpa))
    del models
    gc.collect()


def whole_model(name, batch, seq, budget, rows, table):
    cfg = {"model": name, "batch": batch, "seq": seq, "dtype": "float32", "budget_GiB": budget / 2 ** 30}
    for p in PROVIDERS:
        m = build(name, p, 12)
        data = batch_for(m, batch, seq)
        _, total = saved_bytes_by_layer(m, decoder_layers(m), **data)
        per_sample = total / batch
        fits = int(budget // per_sample)
        rows.add("model", p, "saved_bytes", "MiB", total / MiB, config=cfg)
        rows.add("model", p, "max_batch_in_budget", "samples", fits, config=cfg)
        table.append((name, p, total / MiB, fits))
        del m
        gc.collect()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 2, seq 128, 1 timing repetition")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier CPU times "
                                                                  "on a shared machine; 0 leaves torch's default)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                    help="subset (each in its own process keeps peak memory down); CSV: memory[_<names>].csv")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, seq, reps = (2, 128, 1) if args.quick else (8, 512, args.reps)
    time_batch = 2  # timing batch: CPU step times at batch 8 take minutes per provider here
    whole_batch = 1  # whole-model forward with the LM head; saved bytes are linear in the batch
    budget = (1 if args.quick else 8) * 2 ** 30
    rows = Rows("memory")
    layer_table, model_table = [], []
    csv_name = "memory" if list(args.models) == list(MODELS) else "memory_" + "_".join(args.models)
    for name in args.models:
        per_layer(name, batch, seq, time_batch, reps, rows, layer_table)
        whole_model(name, whole_batch, seq, budget, rows, model_table)
        path = rows.write(csv_name)  # after each model: partial results survive an interruption
        print(f"done {name}", file=sys.stderr)
    print(f"\nPer layer (middle of 3), batch {batch}, seq {seq}, fp32, training, dropout on; "
          f"threads {torch.get_num_threads()}")
    print(f"step: forward + backward of the 3 layers (bare model, no LM head) at batch {time_batch}, seq {seq}, "
          f"process CPU seconds, median")
    print(f"{'model':<12} {'provider':<12} {'saved MiB':>10} {'minimum':>9} {'x min':>6} {'cpu s':>8} "
          f"{'t/eager':>8} {'t/sdpa':>7}")
    for name, p, mib, floor, ratio, sec, rel, rel2 in layer_table:
        print(f"{name:<12} {p:<12} {mib:10.1f} {floor:9.1f} {ratio:6.2f} {sec:8.2f} {rel:8.2f} {rel2:7.2f}")
    print(f"\nWhole model (12 layers), batch {whole_batch}, seq {seq}; largest batch within "
          f"{budget / 2 ** 30:.0f} GiB of saved activations")
    print(f"{'model':<12} {'provider':<12} {'saved MiB':>10} {'max batch':>10}")
    for name, p, mib, fits in model_table:
        print(f"{name:<12} {p:<12} {mib:10.1f} {fits:10d}")
    print(f"\nminimum: 'fused' for stock-sdpa and lean (flash-style), 'eager' (keeps P) for stock-eager and "
          f"lean-tempo; rows in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
