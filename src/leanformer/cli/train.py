"""`leanformer train`: train a Transformer with the lean recipe, then show the memory it saved.

With no arguments: llama-tiny (random init, byte vocabulary) on the built-in corpus for a few minutes on
CPU, lean recipe (patch_ + APOLLO-Mini), progress bar, validation loss, and a lean-vs-stock memory table.
Scale out with `torchrun --nproc_per_node N -m leanformer train --distributed ddp|fsdp2 ...`.
"""
from __future__ import annotations

import argparse
import json
import sys

_DEFAULTS = None  # TrainConfig defaults, read lazily so --help stays cheap


def _defaults():
    global _DEFAULTS
    if _DEFAULTS is None:
        from leanformer.train.config import TrainConfig

        _DEFAULTS = TrainConfig.__dataclass_fields__
    return {k: f.default for k, f in _DEFAULTS.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _defaults()
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", default=d["model"],
                   help="named config (llama-tiny, llama-small, gpt2, bert-base, minilm) or a Hugging Face model "
                        "directory; BERT-family models train as masked LMs (default: %(default)s)")
    g.add_argument("--layers", type=int, help="override the number of layers (quick runs)")
    g.add_argument("--hidden", type=int, help="override the hidden size (random-init models)")
    g.add_argument("--data", metavar="FILE|DIR", help="a text file or a folder of them (default: built-in corpus)")
    g = parser.add_argument_group("recipe")
    g.add_argument("--recipe", default=d["recipe"], choices=("lean", "stock"),
                   help="lean: patch_ + APOLLO-Mini; stock: Hugging Face layers + AdamW (default: %(default)s)")
    g.add_argument("--optimizer", choices=("apollo-mini", "apollo", "adamw"), help="override the recipe's optimizer")
    g.add_argument("--lr", type=float, help="peak learning rate (default: the optimizer's)")
    g.add_argument("--dtype", default=d["dtype"], choices=("float32", "bfloat16"),
                   help="bfloat16 = autocast compute, fp32 weights (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d["seed"])
    g = parser.add_argument_group("batch and length")
    g.add_argument("--batch", type=int, default=d["batch"], help="global batch in sequences (default: %(default)s)")
    g.add_argument("--micro-batch", type=int, help="sequences per forward pass; the rest is gradient accumulation")
    g.add_argument("--seq", type=int, default=d["seq"], help="tokens per sequence (default: %(default)s)")
    g.add_argument("--steps", type=int, default=d["steps"], help="optimizer steps (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=d["warmup"], help="warmup steps (default: %(default)s)")
    g.add_argument("--memory-budget", metavar="SIZE",
                   help="e.g. 2GiB: measure a step and pick the largest micro-batch that fits, keeping --batch")
    g = parser.add_argument_group("evaluation, checkpoints, output")
    g.add_argument("--eval-every", type=int, default=d["eval_every"], help="steps between validation losses")
    g.add_argument("--out", metavar="DIR", help="write checkpoints to DIR/step-NNNNNN")
    g.add_argument("--save-every", type=int, default=d["save_every"], help="steps between checkpoints (0: at the end)")
    g.add_argument("--async-save", action="store_true", help="write checkpoints in a background thread")
    g.add_argument("--resume", metavar="DIR", help="continue from a checkpoint (or the newest one in a run's DIR)")
    g.add_argument("--distributed", default=d["distributed"], choices=("none", "ddp", "fsdp2"),
                   help="under torchrun: PyTorch DDP or FSDP2 (gloo on CPU, nccl on GPU)")
    g.add_argument("--no-memory-table", action="store_true", help="skip the lean-vs-stock memory table")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def config_from_args(args: argparse.Namespace):
    from leanformer.cli.main import CLIError
    from leanformer.train.budget import BudgetError, parse_size
    from leanformer.train.config import TrainConfig

    try:
        budget = parse_size(args.memory_budget) if args.memory_budget else None
        return TrainConfig(
            model=args.model, layers=args.layers, hidden=args.hidden, data=args.data, recipe=args.recipe,
            optimizer=args.optimizer, batch=args.batch, micro_batch=args.micro_batch, seq=args.seq,
            steps=args.steps, lr=args.lr, warmup=args.warmup, dtype=args.dtype, seed=args.seed,
            memory_budget=budget, eval_every=args.eval_every, save_every=args.save_every,
            async_save=args.async_save, out=args.out, resume=args.resume, distributed=args.distributed,
            memory_table=not args.no_memory_table, progress=not (args.no_progress or args.json),
        )
    except (BudgetError, ValueError) as exc:
        raise CLIError(str(exc).replace("invalid ", "invalid --", 1).replace("_", "-")
                       if str(exc).startswith("invalid ") else str(exc)) from exc


def format_memory_table(mem: dict) -> str:
    from leanformer.train.budget import fmt_bytes

    lean, stock = mem["lean"], mem["stock"]
    rows = [("params", "params"), ("grads", "grads"), ("optimizer state", "optimizer_state"),
            ("saved activations", "activations"), ("total", "total")]
    head_l = f"lean ({lean['optimizer']})"
    head_s = f"stock ({stock['optimizer']})"
    lines = [f"memory of one training step (micro-batch {mem['micro_batch']} x seq {mem['seq']}, "
             f"measured by {lean['source']}):",
             f"  {'':<18}{head_l:>22}{head_s:>22}{'lean/stock':>12}"]
    for label, key in rows:
        ratio = lean[key] / stock[key] if stock[key] else float("nan")
        shown = f"{ratio:.2f}x" if ratio >= 0.1 or ratio != ratio else f"{ratio:.4f}x"  # keep tiny ratios visible
        lines.append(f"  {label:<18}{fmt_bytes(lean[key]):>22}{fmt_bytes(stock[key]):>22}{shown:>12}")
    return "\n".join(lines)


def format_summary(res: dict) -> str:
    tps = f"{res['tokens_per_s']:,.0f} tokens/s" if res.get("tokens_per_s") else "no steps run"
    lines = [f"done: {res['steps']} steps of {res['model']} ({res['recipe']} recipe, {res['optimizer']}) in "
             f"{res['wall_s']:.0f} s, {tps}; train loss {res['train_loss']:.4f}, val loss {res['val_loss']:.4f}"]
    if res.get("checkpoint"):
        lines.append(f"checkpoint: {res['checkpoint']}")
    if res.get("memory"):
        lines.append(format_memory_table(res["memory"]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from leanformer.cli.main import CLIError
    from leanformer.train.loop import train

    cfg = config_from_args(args)
    try:
        result = train(cfg, verbose=not args.json)
    except ValueError as exc:  # TrainError, BudgetError, DataError, CheckpointError: user-facing, one line
        raise CLIError(str(exc)) from exc
    if not _is_main():  # under torchrun only rank 0 reports
        return 0
    if args.json:
        json.dump(result, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_summary(result))
    return 0


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
