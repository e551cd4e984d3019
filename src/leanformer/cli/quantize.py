"""`leanformer quantize`: quantize a model's weights, save it packed, print size, time and fidelity."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ("rtn", "mse", "squant", "ant", "w8a8", "w4a8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm", help="'minilm' or a Hugging Face model directory")
    parser.add_argument("--method", choices=METHODS, default="mse",
                        help="rtn: round-to-nearest; mse: asymmetric + clip search + least-squares refits weighted by "
                             "random-token input statistics, no data (default); "
                             "squant / ant: the papers' rounding / numeric types; w8a8: dynamic int8 activations; "
                             "w4a8: mse's 4-bit weights (g32 by default) with dynamic int8 activations, run on the "
                             "int8 kernels")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=None,
                        help="weight bits (default: 8 for w8a8, else 4)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="weights per scale (32/64/128; 0 = per output channel). Default: 64 for 4 bits "
                             "(32 for w4a8), per channel for 8 bits")
    parser.add_argument("--symmetric", action="store_true", help="symmetric codes (rtn/mse)")
    parser.add_argument("--budget-mb", type=float, default=None,
                        help="mixed precision: keep the most sensitive Linears at 8 bits within this many MB of "
                             "Linear weights (rtn/mse)")
    parser.add_argument("--embedding-bits", type=int, choices=(0, 4, 8), default=8,
                        help="quantize embedding tables per row (0 = keep them float)")
    parser.add_argument("--act-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the float remainder (LayerNorm, attention, GELU); with bfloat16 the weight-only "
                             "layers skip the fp32<->bf16 casts around their bf16 GEMMs (MiniLM W4 g64: 1.16x faster "
                             "on a Sapphire Rapids CPU, same fidelity; slower for w8a8); saved with the checkpoint")
    parser.add_argument("--out", required=True, help="output directory (a new, empty, or leanformer checkpoint dir)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty foreign directory")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_config(args: argparse.Namespace):
    from leanformer.cli.main import CLIError
    from leanformer.quant import ANTConfig, MixedPrecisionConfig, SQuantConfig, W4A8Config, W8A8Config, WeightOnlyConfig

    if args.bits is None:  # the method's own width: w8a8 is 8-bit by definition
        args.bits = 8 if args.method == "w8a8" else 4
    gs = args.group_size
    if gs is None:
        gs = (32 if args.method == "w4a8" else 64) if args.bits == 4 else 0
    gs = None if gs == 0 else gs
    try:
        if args.method == "w8a8":
            if args.bits != 8 or args.budget_mb is not None:
                raise CLIError("--method w8a8 needs --bits 8 and no --budget-mb")
            return W8A8Config()
        if args.method == "w4a8":
            if args.bits != 4 or args.budget_mb is not None:
                raise CLIError("--method w4a8 needs --bits 4 and no --budget-mb")
            return W4A8Config(group_size=gs, symmetric=args.symmetric)
        if args.method == "squant":
            cfg = SQuantConfig(bits=args.bits, group_size=gs, symmetric=True)
        elif args.method == "ant":
            cfg = ANTConfig(bits=args.bits, group_size=gs)
        else:
            mse = args.method == "mse"
            cfg = WeightOnlyConfig(bits=args.bits, group_size=gs, symmetric=args.symmetric or (not mse and args.bits == 8),
                                   clip_search=mse, refine_steps=3 if mse else 0, act_weighting=mse)
        if args.budget_mb is not None:
            if not isinstance(cfg, WeightOnlyConfig) or args.bits != 4:
                raise CLIError("--budget-mb works with --method rtn|mse and --bits 4")
            return MixedPrecisionConfig(low=cfg, budget_mb=args.budget_mb)
        return cfg
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def embedding_config(bits: int):
    """8 bits: symmetric per row (lossless in practice); 4 bits: asymmetric groups of 16 with refits, the best
    int4 layout measured on MiniLM (mean cosine 0.9988 with int8 weights, vs 0.9981 at g32)."""
    from leanformer.quant import EmbeddingConfig

    if bits == 8:
        return EmbeddingConfig(bits=8)
    return EmbeddingConfig(bits=4, group_size=16, symmetric=False, refine_steps=3)


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6


def run(args: argparse.Namespace) -> int:
    from leanformer.cli.main import CLIError

    config = build_config(args)
    import torch

    from leanformer.models import ModelError, build_model, resolve
    from leanformer.quant import CheckpointError, quantize_, save_quantized, set_activation_dtype_
    from leanformer.quant.serialize import check_writable
    from leanformer.quant.fidelity import SENTENCES, compare, embed
    from leanformer.quant.native import native_ops

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        check_writable(out, overwrite=args.overwrite)  # fail before minutes of work, not after
    except CheckpointError as exc:
        raise CLIError(str(exc)) from exc
    try:
        spec = resolve(args.model)
        model = build_model(args.model, task="base").eval()
    except ModelError as exc:
        raise CLIError(str(exc)) from exc
    tokenizer = _tokenizer(spec.path)
    ref = embed(model, tokenizer, SENTENCES) if tokenizer is not None else None
    native_ops()  # the one-time build of the native kernels (minutes, cached) is not quantization time
    start = time.perf_counter()
    try:
        report = quantize_(model, config)
        if args.embedding_bits:
            report = report.merge(quantize_(model, embedding_config(args.embedding_bits)))
    except (ValueError, TypeError, ImportError) as exc:
        raise CLIError(f"quantization failed: {exc}") from exc
    seconds = time.perf_counter() - start
    if args.act_dtype != "float32":
        set_activation_dtype_(model, getattr(torch, args.act_dtype))
    try:
        save_quantized(model, out, overwrite=args.overwrite)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from exc
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    linear = [layer for layer in report.layers if layer.kind != "Embedding"]
    result = {
        "model": args.model, "method": args.method, "config": config.to_dict(), "out": str(out),
        "seconds": round(seconds, 3),
        "linear_mb_before": sum(layer.bytes_before for layer in linear) / 1e6,
        "linear_mb_after": sum(layer.bytes_after for layer in linear) / 1e6,
        "weights_file_mb": (out / "model.safetensors").stat().st_size / 1e6,
        "dir_mb": _dir_mb(out),
        "bits": {str(b): sum(1 for layer in linear if layer.bits == b) for b in sorted({l.bits for l in linear})},
    }
    if ref is not None:
        result["fidelity"] = compare(ref, embed(model, tokenizer, SENTENCES)).as_dict()
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{report.summary()}")
    print(f"Linear weights: {result['linear_mb_before']:.2f} MB -> {result['linear_mb_after']:.2f} MB "
          f"({', '.join(f'{n} x {b}-bit' for b, n in result['bits'].items())})")
    print(f"saved {out}: model.safetensors {result['weights_file_mb']:.2f} MB, directory {result['dir_mb']:.2f} MB")
    print(f"quantization time: {seconds:.2f} s")
    if ref is not None:
        f = result["fidelity"]
        print(f"fidelity vs float on {f['n']} built-in sentences: mean cosine {f['mean_cos']:.4f}, "
              f"worst {f['worst_cos']:.4f}, nearest-neighbour agreement {f['nn_agreement']:.2f}")
    else:
        print("fidelity: skipped (no tokenizer in the model directory)")
    return 0


def _tokenizer(path):
    if path is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        return None
