"""Benchmark of `leanformer train`'s recipes: lean (patch_ + APOLLO-Mini) vs stock (HF layers + AdamW).

For the same model and micro-batch: training tokens/s of one full step (forward, backward, optimizer),
the activations saved for backward and the whole step's bytes (leanformer.profile.measure_step), and the
largest micro-batch each recipe fits under one shared memory budget (the `--memory-budget` planner, every
answer measured). Run: python benchmarks/bench_train.py [--quick] [--model llama-tiny] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows, time_fn  # noqa: E402

from leanformer.train import recipes  # noqa: E402
from leanformer.train.budget import fmt_bytes, plan_batch  # noqa: E402
from leanformer.train.config import TrainConfig  # noqa: E402
from leanformer.train.data import IGNORE  # noqa: E402
from leanformer.train.loop import Trainer, token_loss_sum  # noqa: E402


def step_fn(trainer: Trainer, recipe: recipes.Recipe, optimizer: str, batch: int):
    model, _ = trainer.fresh_model(recipe)
    opt, used, _ = trainer.fresh_optimizer(model, optimizer)
    inputs, targets = trainer._device_batch(trainer.data.train, torch.arange(batch))
    n = int((targets != IGNORE).sum())

    def step():
        loss = token_loss_sum(model(**inputs).logits, targets) / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 layers, fewer repetitions")
    ap.add_argument("--model", default="llama-tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = 2 if args.quick else None
    reps = 3 if args.quick else 7
    cfg = TrainConfig(model=args.model, layers=layers, batch=args.batch, seq=args.seq, memory_table=False,
                      progress=False)
    trainer = Trainer(cfg, verbose=False)
    rows = Rows("train")
    shape = f"b{args.batch}xs{args.seq}"
    conf = {"model": args.model, "layers": layers, "batch": args.batch, "seq": args.seq,
            "threads": torch.get_num_threads()}
    recipe_opts = {"stock": recipes.RECIPES["stock"].optimizer, "lean": recipes.RECIPES["lean"].optimizer}
    results: dict[str, dict] = {}
    for name, opt_name in recipe_opts.items():
        recipe = recipes.RECIPES[name]
        step, used = step_fn(trainer, recipe, opt_name, args.batch)
        p20, p50, p80 = time_fn(step, warmup=2, reps=reps)
        tps = args.batch * args.seq / p50
        mem = trainer.measure_recipe(recipe, opt_name, args.batch)
        results[name] = dict(tps=tps, p20=p20, p80=p80, mem=mem, optimizer=used)
        provider = f"{name}:{used}"
        rows.add("train_step", provider, "tokens_per_s", "tok/s", tps, p20=args.batch * args.seq / p80,
                 p80=args.batch * args.seq / p20, x_name="shape", x_value=shape, config=conf)
        rows.add("train_step", provider, "saved_activations", "bytes", mem.activations, x_name="shape",
                 x_value=shape, config=conf)
        rows.add("train_step", provider, "step_total", "bytes", mem.total, x_name="shape", x_value=shape,
                 config=conf)
        rows.add("train_step", provider, "optimizer_state", "bytes", mem.optimizer_state, x_name="shape",
                 x_value=shape, config=conf)
    # One shared budget: what the stock recipe needs at the requested batch. Candidates: divisors of 4x batch.
    budget = results["stock"]["mem"].total
    for name, opt_name in recipe_opts.items():
        plan = plan_batch(4 * args.batch, budget,
                          lambda b, r=recipes.RECIPES[name], o=opt_name: trainer.measure_recipe(r, o, b),
                          max_measurements=8)
        results[name]["plan"] = plan
        rows.add("budget_plan", f"{name}:{results[name]['optimizer']}", "largest_micro_batch", "sequences",
                 plan.micro_batch, x_name="budget_bytes", x_value=budget, config={**conf, "tried": plan.tried})
    trainer.close()
    path = rows.write()

    s, l = results["stock"], results["lean"]
    print(f"{args.model} (layers {layers or 'all'}), micro-batch {args.batch} x seq {args.seq}, "
          f"{torch.get_num_threads()} threads; memory by {l['mem'].source}")
    print(f"{'':<28}{'stock (' + s['optimizer'] + ')':>20}{'lean (' + l['optimizer'] + ')':>24}{'lean/stock':>12}")
    lines = [("tokens/s (p50)", s["tps"], l["tps"], lambda v: f"{v:,.0f}"),
             ("saved activations", s["mem"].activations, l["mem"].activations, fmt_bytes),
             ("optimizer state", s["mem"].optimizer_state, l["mem"].optimizer_state, fmt_bytes),
             ("step total", s["mem"].total, l["mem"].total, fmt_bytes),
             (f"largest batch in {fmt_bytes(budget)}", s["plan"].micro_batch, l["plan"].micro_batch, str)]
    for label, sv, lv, f in lines:
        ratio = lv / sv
        print(f"{label:<28}{f(sv):>20}{f(lv):>24}{(f'{ratio:.2f}x' if ratio >= 0.1 else f'{ratio:.4f}x'):>12}")
    print(f"rows written to {path}")


if __name__ == "__main__":
    main()
