"""Atomic checkpoints: a crash in the middle of a save leaves the previous checkpoint loadable."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from train_helpers import one_thread  # noqa: F401  (autouse fixture)
from leanformer.train import checkpoint as ckpt


def _snap(step: int, fill: float) -> ckpt.Snapshot:
    model = {"w": torch.full((64, 64), fill), "b": torch.arange(5.0)}
    optimizer = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.full((64, 64), fill / 2)}},
                 "param_groups": [{"lr": 1e-3, "params": [0]}]}
    trainer = {"step": torch.tensor(step), "rng_cpu": torch.get_rng_state()}
    return ckpt.Snapshot(step, model, optimizer, trainer, {"step": step, "fingerprint": {"sha1": "x"}})


def _assert_step5_intact(out):
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-000005"]
    found = ckpt.find_checkpoint(out)
    loaded = ckpt.load_checkpoint(found)
    assert torch.equal(loaded["model"]["w"], torch.full((64, 64), 1.0))
    assert int(loaded["trainer"]["step"]) == 5 and loaded["meta"]["step"] == 5


def test_exception_mid_save_keeps_previous(tmp_path, monkeypatch):
    out = tmp_path / "run"
    ckpt.write_snapshot(_snap(5, 1.0), out, keep=2)

    def broken_save(obj, path, *a, **k):  # the optimizer file is written half-way, then the disk "fails"
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.write_snapshot(_snap(10, 2.0), out, keep=2)
    _assert_step5_intact(out)


def test_process_killed_mid_save_keeps_previous(tmp_path):
    """A real crash: the saving process dies (os._exit) after writing part of the new checkpoint."""
    out = tmp_path / "run"
    ckpt.write_snapshot(_snap(5, 1.0), out, keep=2)
    script = textwrap.dedent(f"""
        import os, torch
        from leanformer.train import checkpoint as ckpt
        real_save = torch.save
        def dying_save(obj, path, *a, **k):
            real_save(obj, path, *a, **k)
            if str(path).endswith("trainer.pt"):
                os._exit(9)  # killed after weights + optimizer + loop state, before meta.json and the rename
        torch.save = dying_save
        model = {{"w": torch.full((64, 64), 2.0), "b": torch.arange(5.0)}}
        snap = ckpt.Snapshot(10, model, {{"state": {{}}, "param_groups": []}}, {{"step": torch.tensor(10)}}, {{"step": 10}})
        ckpt.write_snapshot(snap, ckpt.Path({str(out)!r}), keep=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert any(p.name.startswith(".tmp-step-000010") for p in out.iterdir())  # the half save is there...
    _assert_step5_intact(out)  # ...but invisible: the last good checkpoint is what resume finds
    ckpt.CheckpointWriter(out, keep=2, background=False)  # a new run clears the dead process' leftovers
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


def test_background_writer_saves_a_snapshot_taken_before_later_changes(tmp_path):
    out = tmp_path / "run"
    live = torch.ones(256, 256)
    writer = ckpt.CheckpointWriter(out, keep=3, background=True)
    snap = ckpt.Snapshot(1, ckpt.to_cpu_copy({"w": live}), {"state": {}, "param_groups": []},
                         {"step": torch.tensor(1)}, {"step": 1})
    writer.save(snap)
    live.mul_(3.0)  # training goes on while the thread writes: the checkpoint must hold the old values
    path = writer.wait()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(256, 256))


def test_background_writer_reraises_errors(tmp_path, monkeypatch):
    writer = ckpt.CheckpointWriter(tmp_path / "run", keep=2, background=True)

    def boom(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt, "_save_tensor_file", boom)
    writer.save(_snap(3, 1.0))
    with pytest.raises(OSError, match="disk gone"):
        writer.wait()
    assert ckpt.list_checkpoints(tmp_path / "run") == []


def test_incomplete_directory_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "run" / "step-000007"
    bad.mkdir(parents=True)
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.find_checkpoint(tmp_path / "run")
