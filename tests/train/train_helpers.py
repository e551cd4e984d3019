"""Shared helpers for the train tests (fixtures imported by each test file): tiny config, text file, subprocess runner."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# 1 layer, hidden 64, seq 32: a step takes milliseconds, so the tests measure plumbing, not compute.
TINY = dict(model="llama-tiny", layers=1, hidden=64, seq=32, batch=4, steps=10, eval_every=0,
            memory_table=False, progress=False)
TINY_ARGS = ["--layers", "1", "--hidden", "64", "--seq", "32", "--batch", "4"]


def run_cli(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "leanformer", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    """Run `python -m leanformer ...` in a fresh process (progress bars off)."""
    return run_cli


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)


@pytest.fixture
def text_file(tmp_path):
    """A small real-text file (the built-in corpus' first 60 kB), so tests do not depend on its size."""
    from leanformer.data.corpus import stdlib_docstrings

    path = tmp_path / "corpus.txt"
    path.write_text(stdlib_docstrings()[:60_000], encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP barrier stalls that made a
    millisecond step take seconds under load (measured: 0.01 s vs 2 s per step of a 1-layer BERT)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
