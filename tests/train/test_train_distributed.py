"""Scale-out: gradient accumulation and 2-process DDP / FSDP2 (torchrun, gloo on CPU) match one process
with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import TOL
from train_helpers import one_thread, tiny, text_file  # noqa: F401  (pytest fixtures)
from leanformer.train.config import TrainConfig
from leanformer.train.loop import train

STEPS = 3


def _weights(out) -> dict:
    return load_file(str(out / f"step-{STEPS:06d}" / "model.safetensors"))


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        # Summation order differs (per-rank / per-micro-batch partial sums), so not bitwise: fp32 table tolerance.
        torch.testing.assert_close(a[k], b[k], **TOL[torch.float32], msg=lambda m: f"{k}: {m}")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, text_file, tiny):
    cfg = dict(tiny, data=str(text_file), steps=STEPS)
    one = train(TrainConfig(**cfg, out=str(tmp_path / "big")), verbose=False)
    acc = train(TrainConfig(**cfg, micro_batch=1, out=str(tmp_path / "acc")), verbose=False)
    assert (one["accumulation"], acc["accumulation"]) == (1, 4)
    _assert_close(_weights(tmp_path / "big"), _weights(tmp_path / "acc"))


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_two_process_run_matches_single_process(tmp_path, text_file, tiny, mode):
    args = ["--layers", "1", "--hidden", "64", "--seq", "32", "--batch", "4", "--steps", str(STEPS),
            "--data", str(text_file), "--no-memory-table", "--eval-every", "0"]
    single = tmp_path / "single"
    train(TrainConfig(**dict(tiny, data=str(text_file), steps=STEPS), out=str(single)), verbose=False)
    multi = tmp_path / mode
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "leanformer", "train", *args, "--distributed", mode, "--out", str(multi)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # only rank 0 reports
    assert f"{mode} x2" in proc.stderr
    _assert_close(_weights(single), _weights(multi))


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_resume_is_bit_identical(tmp_path, text_file):
    """FSDP2 checkpoints keep each rank's optimizer shard (APOLLO's moments are shard-local plain tensors,
    which a gathered 'full' optimizer state dict would replace by rank 0's copy)."""
    args = ["--layers", "1", "--hidden", "64", "--seq", "32", "--batch", "4", "--steps", "4", "--data",
            str(text_file), "--no-memory-table", "--eval-every", "0", "--distributed", "fsdp2"]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "leanformer", "train"]
    for extra in (["--save-every", "2", "--out", str(tmp_path / "a")],
                  ["--resume", str(tmp_path / "a" / "step-000002"), "--out", str(tmp_path / "b")]):
        proc = subprocess.run(launch + args + extra, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "a" / "step-000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "step-000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
