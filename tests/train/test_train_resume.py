"""`--resume` continues bit-identically to an uninterrupted run (weights, optimizer state, losses)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import one_thread, tiny, text_file  # noqa: F401  (pytest fixtures)
from leanformer.train.config import TrainConfig
from leanformer.train.loop import train


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("variant", [
    dict(),  # lean recipe: patch_ + APOLLO-Mini, causal LM
    # stock AdamW, masked LM with dropout (the RNG state must resume too), background checkpoint writes
    dict(model="bert-base", hidden=96, recipe="stock", seq=24, async_save=True),
], ids=["lean", "bert-mlm-dropout-async"])
def test_resume_is_bit_identical(tmp_path, text_file, tiny, variant):
    cfg = dict(tiny, data=str(text_file), eval_every=4, **variant)
    full = train(TrainConfig(**cfg, save_every=5, out=str(tmp_path / "a")), verbose=False)
    # "interrupted" after step 5: continue from that checkpoint in a new output directory
    resumed = train(TrainConfig(**cfg, resume=str(tmp_path / "a" / "step-000005"), out=str(tmp_path / "b")),
                    verbose=False)
    a, b = tmp_path / "a" / "step-000010", tmp_path / "b" / "step-000010"
    assert _same_tensors(load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors")))
    assert _same_state(torch.load(a / "optimizer.pt", weights_only=True), torch.load(b / "optimizer.pt", weights_only=True))
    assert _same_state(torch.load(a / "trainer.pt", weights_only=True), torch.load(b / "trainer.pt", weights_only=True))
    assert full["train_loss"] == resumed["train_loss"] and full["val_loss"] == resumed["val_loss"]
    assert [h for h in full["history"] if h["step"] > 5] == resumed["history"]


def test_resume_from_run_directory_picks_newest(tmp_path, text_file, tiny):
    cfg = dict(tiny, data=str(text_file), steps=4)
    train(TrainConfig(**cfg, save_every=2, out=str(tmp_path / "a")), verbose=False)
    res = train(TrainConfig(**dict(cfg, steps=6), resume=str(tmp_path / "a")), verbose=False)
    assert res["steps"] == 6 and res["checkpoint"] == str(tmp_path / "a" / "step-000006")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["step-000004", "step-000006"]  # keep=2
