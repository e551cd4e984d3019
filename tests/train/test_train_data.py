"""Data pipeline: resumable order, rank shards that add up to the global batch, deterministic MLM masks."""
from __future__ import annotations

import pytest
import torch

from train_helpers import one_thread, text_file  # noqa: F401  (pytest fixtures)
from leanformer.train.data import IGNORE, DataError, Sampler, build_dataset, load_text, make_tokenizer
from leanformer.train.loop import lr_at


def test_sampler_state_round_trip_and_epochs():
    a = Sampler(10, seed=3)
    first = torch.cat([a.take(4) for _ in range(2)])
    state = a.state_dict()
    rest_a = torch.cat([a.take(4) for _ in range(3)])  # crosses into epoch 1
    b = Sampler(10, seed=3)
    b.load_state_dict(state)
    assert torch.equal(rest_a, torch.cat([b.take(4) for _ in range(3)]))
    assert sorted(torch.cat([first, rest_a[:2]]).tolist()) == list(range(10))  # epoch 0 is a permutation
    with pytest.raises(DataError, match="same --data"):
        Sampler(11, seed=3).load_state_dict(state)


def test_rank_slices_cover_the_global_batch():
    """Every rank draws the same global indices and keeps its slice: together they are the global batch."""
    world, batch = 3, 6
    samplers = [Sampler(50, seed=0) for _ in range(world)]
    single = Sampler(50, seed=0)
    for _ in range(4):
        glob = single.take(batch)
        parts = [s.take(batch)[r * 2:(r + 1) * 2] for r, s in enumerate(samplers)]
        assert torch.equal(torch.cat(parts), glob)


def test_causal_windows_shift_by_one(text_file):
    tok = make_tokenizer(None, 260)
    data = build_dataset(str(text_file), seq=16, masked_lm=False, tokenizer=tok, seed=0, val_windows=4)
    inputs, targets = data.train.batch(torch.tensor([0, 3]))
    assert inputs["input_ids"].shape == targets.shape == (2, 16)
    assert torch.equal(inputs["input_ids"][:, 1:], targets[:, :-1])
    assert len(data.val) == 4 and data.n_tokens == len(text_file.read_bytes())


def test_masked_lm_masks_are_deterministic_per_window(text_file):
    tok = make_tokenizer(None, 260)
    data = build_dataset(str(text_file), seq=64, masked_lm=True, tokenizer=tok, seed=1, val_windows=4)
    (a, ta), (b, tb) = data.train.batch(torch.tensor([5, 9])), data.train.batch(torch.tensor([9]))
    assert torch.equal(a["input_ids"][1], b["input_ids"][0]) and torch.equal(ta[1], tb[0])  # not batch-dependent
    ids, t = a["input_ids"], ta
    assert (ids[:, 0] == tok.cls_id).all() and (ids[:, -1] == tok.sep_id).all()
    picked = t != IGNORE
    assert 0.05 < picked.float().mean() < 0.3
    raw = data.train.windows[torch.tensor([5, 9])]
    assert torch.equal(t[:, 1:-1][picked[:, 1:-1]], raw[picked[:, 1:-1]])  # targets are the original tokens
    assert (ids[picked] == tok.mask_id).float().mean() > 0.5


def test_hf_directory_tokenizer(tmp_path):
    from leanformer.models import minilm_dir

    tok = make_tokenizer(minilm_dir(), 30522)
    ids = tok.encode("Hello world.\n\nSecond paragraph.")
    assert ids.dtype == torch.int64 and (ids == tok.sep_id).sum() == 2 and tok.mask_id == 103


def test_folder_of_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta " * 10)
    (tmp_path / "c.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.txt").write_text("secret")
    text, desc = load_text(str(tmp_path))
    assert "alpha" in text and "beta" in text and "secret" not in text and desc.startswith("2 files")


def test_lr_schedule():
    vals = [lr_at(s, base=1.0, warmup=4, total=20) for s in range(20)]
    assert vals[0] == 0.25 and vals[3] == 1.0 and vals[4] == 1.0
    assert all(x >= y for x, y in zip(vals[4:], vals[5:])) and vals[-1] > 0.1
