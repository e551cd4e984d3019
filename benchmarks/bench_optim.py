"""Pretrain llama-tiny on the stdlib-docstring corpus with each optimizer, in one run, same init and batches.

Optimizers: torch AdamW (baseline), apollo-torch APOLLO and APOLLO-Mini (the paper's grouping: low-rank on
attention/MLP only), ours APOLLO and APOLLO-Mini (all parameters with 2+ dims low-rank; the paper's groups;
``lean_param_groups``: every matrix low-rank except embeddings + LM head on 8-bit AdamW), torchao AdamW8bit.
Reports validation loss, optimizer state bytes (whole model, per parameter) and optimizer-step time
(median in training, and isolated on fixed gradients), with ratios vs AdamW.

    python benchmarks/bench_optim.py [--quick] [--steps N --seq S --batch B --threads T --only NAMES --csv NAME]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows  # noqa: E402

from leanformer.data import bytes_tokenizer  # noqa: E402
from leanformer.data.corpus import stdlib_docstrings  # noqa: E402
from leanformer.models import build_model  # noqa: E402
from leanformer.optim import APOLLO, APOLLOMini, lean_param_groups, paper_param_groups, state_bytes  # noqa: E402


def load_data(val_frac: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte ids; the last ``val_frac`` of the docstrings (split at a docstring boundary) is held out."""
    text = stdlib_docstrings()
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - val_frac)))
    return bytes_tokenizer.encode(text[:cut]), bytes_tokenizer.encode(text[cut + 2:])


def batches(data: torch.Tensor, n: int, batch: int, seq: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - seq - 1, (n, batch), generator=gen)
    return [torch.stack([data[s:s + seq] for s in row.tolist()]) for row in starts]


def _apollo_torch(model, lr, mini: bool, rank: int, gap: int):
    import apollo_torch

    low, rest = (g["params"] for g in paper_param_groups(model))
    group = dict(params=low, rank=1 if mini else rank, proj="random", proj_type="std", update_proj_gap=gap,
                 scale_type="tensor" if mini else "channel", scale=128.0 if mini else 1.0)
    return apollo_torch.APOLLOAdamW([group, {"params": rest}], lr=lr, weight_decay=0.0)


def _torchao_adamw8bit(model, lr):
    from torchao.optim import AdamW8bit

    return AdamW8bit(model.parameters(), lr=lr, weight_decay=0.0)


def make_optimizers(rank: int, gap: int, lr: float) -> dict:
    """name -> (factory(model), note). Every optimizer gets the same lr (AdamW's best here, DESIGN.md)."""
    return {
        "torch AdamW": (lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0), "baseline"),
        "apollo-torch APOLLO": (lambda m: _apollo_torch(m, lr, False, rank, gap), f"paper groups, r={rank}"),
        "apollo-torch APOLLO-Mini": (lambda m: _apollo_torch(m, lr, True, rank, gap), "paper groups, r=1"),
        "ours APOLLO": (lambda m: APOLLO(m.parameters(), lr=lr, rank=rank, update_proj_gap=gap),
                        f"all params, r={rank}"),
        "ours APOLLO-Mini": (lambda m: APOLLOMini(m.parameters(), lr=lr, update_proj_gap=gap), "all params, r=1"),
        "ours APOLLO-Mini paper groups": (lambda m: APOLLOMini(paper_param_groups(m), lr=lr, update_proj_gap=gap),
                                          "paper groups, r=1"),
        "ours APOLLO lean groups": (lambda m: APOLLO(lean_param_groups(m), lr=lr, rank=rank, update_proj_gap=gap),
                                    f"all matrices r={rank}, emb+head 8-bit AdamW"),
        "ours APOLLO-Mini lean groups": (lambda m: APOLLOMini(lean_param_groups(m), lr=lr, update_proj_gap=gap),
                                         "all matrices r=1, emb+head 8-bit AdamW"),
        "torchao AdamW8bit": (lambda m: _torchao_adamw8bit(m, lr), "peer"),
    }


@torch.no_grad()
def val_loss(model, val: list[torch.Tensor]) -> float:
    model.eval()
    losses = [model(input_ids=b, labels=b).loss.item() for b in val]
    model.train()
    return sum(losses) / len(losses)


def run_one(name, factory, args, train, val) -> dict:
    model = build_model("llama-tiny", seed=0, attn_implementation="sdpa")
    try:
        opt = factory(model)
    except Exception as exc:  # a peer that cannot run here is reported, not hidden
        return {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min((t + 1) / warm, 0.1 + 0.9 * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, t - warm) / max(1, args.steps - warm))))))
    step_times, t0 = [], time.perf_counter()
    try:
        for t, b in enumerate(train):
            loss = model(input_ids=b, labels=b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            s0 = time.perf_counter()
            opt.step()
            step_times.append(time.perf_counter() - s0)
            opt.zero_grad(set_to_none=True)
            sched.step()
            if t % max(1, args.steps // 5) == 0:
                print(f"  {name:32s} step {t:4d} loss {loss.item():.3f}", flush=True)
    except Exception as exc:
        return {"name": name, "error": f"{type(exc).__name__} at step {t}: {exc}"}
    wall = time.perf_counter() - t0
    vl = val_loss(model, val)
    report = state_bytes(opt)
    steady = sorted(step_times[3:] or step_times)
    return {"name": name, "val_loss": vl, "state_bytes": report["state_bytes"],
            "bytes_per_param": report["bytes_per_param"], "params": report["params"],
            "step_p50": statistics.median(steady), "step_p20": steady[len(steady) // 5],
            "step_p80": steady[(4 * len(steady)) // 5], "wall": wall,
            "first_step": step_times[0] if step_times else float("nan"), "_model": model, "_opt": opt}


def isolated_step_times(results: list[dict], reps: int) -> None:
    """opt.step() on fixed gradients, the optimizers interleaved round by round so that load from other
    processes on this shared machine hits them alike; adds ``iso`` = (p20, p50, p80) seconds."""
    live = [r for r in results if "_opt" in r]
    gen = torch.Generator().manual_seed(7)
    for r in live:
        for p in r["_model"].parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        for _ in range(3):  # warm-up (torchao compiles here if it has not yet)
            r["_opt"].step()
    times = {id(r): [] for r in live}
    for _ in range(reps):
        for r in live:
            t0 = time.perf_counter()
            r["_opt"].step()
            times[id(r)].append(time.perf_counter() - t0)
    for r in live:
        ts = sorted(times[id(r)])
        r["iso"] = (ts[len(ts) // 5], statistics.median(ts), ts[(4 * len(ts)) // 5])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps on short sequences (smoke run)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=64, help="APOLLO rank (d/4 for hidden 256)")
    ap.add_argument("--gap", type=int, default=50, help="update_proj_gap")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated substrings of optimizer names to run")
    ap.add_argument("--csv", default="", help="results/<name>.csv (default optim, or optim_quick)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seq, args.batch, args.gap, args.reps = 20, 64, 4, 5, 5
    torch.set_num_threads(args.threads)
    train_ids, val_ids = load_data()
    train = batches(train_ids, args.steps, args.batch, args.seq, seed=0)
    val = batches(val_ids, 8 if args.quick else 24, args.batch, args.seq, seed=1)
    print(f"corpus: {train_ids.numel()} train / {val_ids.numel()} val bytes; {args.steps} steps of "
          f"{args.batch}x{args.seq}, lr {args.lr}, rank {args.rank}, gap {args.gap}, threads {args.threads}")
    results = []
    for name, (factory, note) in make_optimizers(args.rank, args.gap, args.lr).items():
        if args.only and not any(s.strip() in name for s in args.only.split(",")):
            continue
        res = run_one(name, factory, args, train, val)
        res["note"] = note
        results.append(res)
        print(f"  -> { {k: v for k, v in res.items() if not k.startswith('_')} }", flush=True)
    isolated_step_times(results, args.reps)
    report(results, args)


def report(results: list[dict], args) -> None:
    rows = Rows("optim")
    mode = "quick" if args.quick else "full"
    config = dict(model="llama-tiny", steps=args.steps, seq=args.seq, batch=args.batch, lr=args.lr, rank=args.rank,
                  gap=args.gap, threads=args.threads)
    base = next((r for r in results if r["name"] == "torch AdamW" and "error" not in r), None)
    print(f"\n{'optimizer':32s} {'val loss':>9s} {'d vs AdamW':>10s} {'state B/param':>13s} {'state MB':>9s} "
          f"{'x AdamW':>8s} {'step ms':>8s} {'x AdamW':>8s} {'iso ms':>7s} {'x AdamW':>8s}  note")
    for r in results:
        if "error" in r:
            print(f"{r['name']:32s} FAILED: {r['error']}  ({r['note']})")
            rows.add("pretrain", r["name"], "error", "", r["error"][:200], mode=mode, config=config)
            continue
        rb = lambda key: r[key] / base[key] if base else float("nan")  # noqa: E731
        iso_ratio = r["iso"][1] / base["iso"][1] if base else float("nan")
        print(f"{r['name']:32s} {r['val_loss']:9.4f} {r['val_loss'] - (base['val_loss'] if base else 0):+10.4f} "
              f"{r['bytes_per_param']:13.4f} {r['state_bytes'] / 2**20:9.3f} {rb('state_bytes'):8.4f} "
              f"{1e3 * r['step_p50']:8.2f} {rb('step_p50'):8.3f} {1e3 * r['iso'][1]:7.2f} {iso_ratio:8.3f}  {r['note']}")
        cfg = dict(config, note=r["note"])
        rows.add("pretrain", r["name"], "val_loss", "nats", r["val_loss"], mode=mode, config=cfg)
        rows.add("pretrain", r["name"], "state_bytes", "bytes", r["state_bytes"], mode=mode, config=cfg)
        rows.add("pretrain", r["name"], "state_bytes_per_param", "bytes", r["bytes_per_param"], mode=mode, config=cfg)
        rows.add("pretrain", r["name"], "opt_step_time_train", "s", r["step_p50"], p20=r["step_p20"],
                 p80=r["step_p80"], mode=mode, config=cfg)
        rows.add("pretrain", r["name"], "opt_step_time_isolated", "s", r["iso"][1], p20=r["iso"][0], p80=r["iso"][2],
                 mode=mode, config=cfg)
        rows.add("pretrain", r["name"], "first_step_time", "s", r["first_step"], mode=mode, config=cfg)
        rows.add("pretrain", r["name"], "train_wall_time", "s", r["wall"], mode=mode, config=cfg)
    path = rows.write(args.csv or ("optim" if not args.quick else "optim_quick"))
    print(f"\nrows written to {path}")


if __name__ == "__main__":
    main()
