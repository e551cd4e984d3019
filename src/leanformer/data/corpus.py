"""The built-in text corpus: docstrings of the Python standard library, gathered at run time.

It needs no download, is a few MB of real English-and-code text, and is the same on every machine with the
same Python. The text is cached under ``$LEANFORMER_CACHE`` (default ``~/.cache/leanformer``).
"""
from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("LEANFORMER_CACHE") or Path.home() / ".cache" / "leanformer"
    return Path(root)


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 40:
            out.append(doc.strip())
    return out


def _gather(stdlib: Path) -> str:
    pieces = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo") or "tests" in rel:
            continue
        try:
            pieces.extend(_docstrings(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return "\n\n".join(pieces)


def stdlib_docstrings() -> str:
    """The corpus text (cached; rebuilt if missing or written by another Python version)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha1(f"{stdlib}|{sys.version}".encode()).hexdigest()[:10]
    cached = cache_dir() / f"stdlib_docstrings-{key}.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = _gather(stdlib)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cached)  # atomic: a concurrent reader never sees half a file
    return text
