"""`leanformer profile`: build a model, run one training step under the profiler, print where the bytes go.

``--dtype bf16`` casts the whole model to bfloat16 (``model.to(torch.bfloat16)``: pure-bf16 training, so every
saved tensor is bf16), rather than fp32 weights under autocast, whose saved set mixes fp32 and bf16 copies.
``--lean`` profiles the stock model, then ``leanformer.patch_(model)`` on the same model, and shows both.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leanformer.cli.main import CLIError

MODEL_CHOICES = "minilm, bert-base, gpt2, llama-small, llama-tiny, or a Hugging Face model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm", help=f"model to profile: {MODEL_CHOICES} (default: minilm)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length in tokens (default: 128)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 = the whole model cast to bfloat16 (default: fp32)")
    parser.add_argument("--attn", choices=("eager", "sdpa"), default="sdpa",
                        help="attention implementation (default: sdpa)")
    parser.add_argument("--optimizer", choices=("adamw", "none"), default="adamw",
                        help="run an optimizer step so its state is counted (default: adamw)")
    parser.add_argument("--layers", type=int, default=None, metavar="N", help="override num_hidden_layers (quick runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a model config field, e.g. --set attention_probs_dropout_prob=0 (repeatable)")
    parser.add_argument("--lean", action="store_true", help="also profile after leanformer.patch_(model), side by side")
    parser.add_argument("--json", action="store_true", help="print the report as JSON ({stock, lean} with --lean)")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="write a stacked-bar chart to FILE.png")
    parser.add_argument("--overwrite", action="store_true", help="let --plot replace an existing file")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and tokens (default: 0)")


def _parse_overrides(items: list[str], layers: int | None) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text  # plain strings need no quotes
    if layers is not None:
        if layers < 1:
            raise CLIError(f"--layers must be >= 1, got {layers}")
        out["num_hidden_layers"] = layers
    return out


def _check_args(args: argparse.Namespace) -> None:
    if args.batch < 1 or args.seq < 1:
        raise CLIError(f"--batch and --seq must be >= 1, got {args.batch} and {args.seq}")
    if args.plot is not None:
        path = Path(args.plot)
        if path.suffix.lower() != ".png":
            raise CLIError(f"--plot must name a .png file, got {args.plot!r}")
        if path.exists() and not args.overwrite:
            raise CLIError(f"{path} exists: refusing to overwrite it (add --overwrite)")


def _load_patch():
    """``leanformer.patch_``, or a CLIError saying why it is unavailable."""
    try:
        import leanformer

        return leanformer.patch_
    except (ImportError, AttributeError) as exc:
        raise CLIError(f"--lean needs leanformer.patch_, which is not available in this build ({exc})") from exc


def _status(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"[profile] {msg}", file=sys.stderr, flush=True)


def _profile_once(model, batch: dict, args: argparse.Namespace, meta: dict):
    import torch

    from leanformer.profile import measure_step

    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if args.optimizer == "adamw" else None
    report = measure_step(model, batch, optimizer=optimizer)
    report.meta = dict(meta)
    del optimizer
    return report


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    overrides = _parse_overrides(args.overrides, args.layers)
    patch_ = _load_patch() if args.lean else None

    import torch

    from leanformer.models import ModelError, build_model, example_batch

    _status(f"building {args.model} ({args.attn} attention)")
    try:
        model = build_model(args.model, task="lm", attn_implementation=args.attn, seed=args.seed, **overrides)
        batch = example_batch(model, args.batch, args.seq, seed=args.seed)
    except ModelError as exc:
        raise CLIError(str(exc)) from exc
    except (TypeError, ValueError, AttributeError) as exc:  # a bad --set key or value reaches the HF config
        raise CLIError(f"cannot build {args.model!r} with {overrides}: {exc}") from exc
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    model.train()
    meta = {"batch": args.batch, "seq": args.seq, "dtype": args.dtype, "attn": args.attn,
            "layers": model.config.num_hidden_layers, "optimizer": args.optimizer}
    meta.update({f"set.{k}": v for k, v in overrides.items() if k != "num_hidden_layers"})

    _status(f"profiling one training step at batch {args.batch}, seq {args.seq}")
    reports = {"stock": _profile_once(model, batch, args, {**meta, "variant": "stock"})}
    if patch_ is not None:
        _status("patching with leanformer.patch_ and profiling again")
        try:
            patch_report = patch_(model)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise CLIError(f"leanformer.patch_ failed on {args.model!r}: {exc}") from exc
        lean = _profile_once(model, batch, args, {**meta, "variant": "lean"})
        text = str(patch_report).splitlines() or [""]
        lean.notes.append(text[0] if len(text) < 2 else f"{text[0]}; {text[-1]}")  # headline + per-technique counts
        reports["lean"] = lean

    if args.plot is not None:
        from leanformer.profile import plot_reports

        try:
            path = plot_reports({f"{args.model} {k}": r for k, r in reports.items()}, args.plot, overwrite=args.overwrite)
        except ImportError as exc:
            raise CLIError(str(exc)) from exc
        _status(f"wrote {path}")
    if args.json:
        payload = reports["stock"].to_dict() if len(reports) == 1 else {k: r.to_dict() for k, r in reports.items()}
        print(json.dumps(payload, indent=2))
    else:
        print(_render(reports))
    return 0


def _render(reports: dict) -> str:
    if len(reports) == 1:
        return reports["stock"].table()
    from leanformer.profile.compare import compare_table

    return "\n\n".join([r.table() for r in reports.values()] + [compare_table(reports)])
