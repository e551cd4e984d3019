"""`leanformer compare-embeddings`: cosine fidelity of a quantized checkpoint vs its float model."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm", help="the float reference: 'minilm' or a Hugging Face directory")
    parser.add_argument("--quantized", required=True, help="directory written by `leanformer quantize`")
    parser.add_argument("--sentences", default=None,
                        help="text file, one sentence per line (default: 40 built-in sentences)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from leanformer.cli.main import CLIError

    import torch

    from leanformer.models import ModelError, build_model, resolve
    from leanformer.quant import CheckpointError, load_quantized
    from leanformer.quant.fidelity import SENTENCES, compare, embed, read_sentences

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sentences = read_sentences(args.sentences) if args.sentences else SENTENCES
        spec = resolve(args.model)
        reference = build_model(args.model, task="base").eval()
        quantized = load_quantized(args.quantized)
    except (ModelError, CheckpointError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if spec.path is None:
        raise CLIError(f"model {args.model!r} has no pretrained weights or tokenizer to compare against")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    result = compare(embed(reference, tokenizer, sentences), embed(quantized, tokenizer, sentences))
    if args.json:
        print(json.dumps({"model": args.model, "quantized": args.quantized, **result.as_dict()}, indent=1))
    else:
        print(f"{result.n} sentences: mean cosine {result.mean_cos:.4f}, worst {result.worst_cos:.4f}, "
              f"nearest-neighbour agreement {result.nn_agreement:.2f}")
    return 0
