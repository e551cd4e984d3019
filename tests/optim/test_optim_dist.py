"""DDP and FSDP2 (fully_shard) on CPU/gloo with 2 processes: parameters identical across ranks and equal to a
single-process run within fp32 tolerance."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TOL
import _optim_dist_worker as worker

pytestmark = pytest.mark.distributed


def _run(mode: str, tmp_path: Path) -> list[dict]:
    prefix = tmp_path / mode
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(worker.__file__)), mode, str(prefix)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(f"{prefix}.{r}.pt", weights_only=True) for r in range(2)]


def _check(results: list[dict]) -> None:
    for name, cls, kw in worker.CONFIGS:
        single = worker.train(None, cls, kw)
        r0, r1 = results[0][name], results[1][name]
        for key, ref in single.items():
            assert torch.equal(r0[key], r1[key]), (name, key)
            torch.testing.assert_close(r0[key], ref, **TOL[torch.float32], msg=f"{name} {key}")
        assert any(not torch.equal(ref, p0) for ref, p0 in zip(single.values(), worker.train(None, cls, dict(kw, update_proj_gap=1)).values()))


def test_ddp_two_processes(tmp_path):
    _check(_run("ddp", tmp_path))


@pytest.mark.slow
def test_fsdp2_two_processes(tmp_path):
    _check(_run("fsdp", tmp_path))
