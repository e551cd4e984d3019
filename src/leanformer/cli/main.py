"""The `leanformer` command: a thin dispatcher over one module per subcommand.

Each subcommand module (``leanformer.cli.<name>``) defines ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen one is imported, so ``--help`` never pays for torch or transformers.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules import torch lazily inside run().
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("leanformer.cli.train", "train a Transformer with the lean recipe (the main job)"),
    "profile": ("leanformer.cli.profile", "show where every byte of one training step goes"),
    "quantize": ("leanformer.cli.quantize", "quantize a model's weights and save it packed"),
    "compare-embeddings": (
        "leanformer.cli.compare_embeddings",
        "measure a quantized model's embedding fidelity on your sentences",
    ),
    "env": ("leanformer.cli.env", "print versions, threads, CPU flags, CUDA: the report a bug needs"),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _subcommand_parser(name: str, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    module_name, help_text = SUBCOMMANDS[name]
    parser = sub.add_parser(name, help=help_text, description=help_text)
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leanformer",
        description="Train Transformers in less memory and ship them in fewer bits.",
    )
    from leanformer import __version__

    parser.add_argument("--version", action="version", version=f"leanformer {__version__}")
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            _subcommand_parser(name, sub)
        else:  # listed in --help without importing its module
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._run(args) or 0)
    except CLIError as exc:
        print(f"leanformer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leanformer: interrupted", file=sys.stderr)
        return 130
