"""The recipe table: each piece plugs in by one line, and a missing piece falls back with one warning."""
from __future__ import annotations

import pytest
import torch

from train_helpers import one_thread, text_file, tiny  # noqa: F401  (pytest fixtures)
from leanformer.train import recipes
from leanformer.train.config import TrainConfig
from leanformer.train.loop import train


@pytest.fixture
def warnings_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(recipes, "WARN", seen.append)
    monkeypatch.setattr(recipes, "_warned", set())
    return seen


def test_real_pieces_are_used(warnings_seen):
    used, cls = recipes.resolve_optimizer("apollo-mini")
    assert used == "apollo-mini" and cls.__module__.startswith("leanformer.optim")
    assert recipes.piece("patch_") is not None and recipes.piece("measure_step") is not None
    assert warnings_seen == []


def test_missing_pieces_fall_back_with_one_warning_each(monkeypatch, warnings_seen, text_file, tiny):
    monkeypatch.setitem(recipes.OPTIMIZERS, "apollo-mini",
                        recipes.OptimizerEntry("leanformer.no_such_module", "APOLLOMini", lr=3e-3, fallback="adamw"))
    monkeypatch.setitem(recipes.PIECES, "patch_", ("leanformer.no_such_module", "patch_"))
    monkeypatch.setitem(recipes.PIECES, "measure_step", ("leanformer.no_such_module", "measure_step"))
    res = train(TrainConfig(**dict(tiny, data=str(text_file), steps=2, memory_table=True)), verbose=False)
    assert res["optimizer"] == "adamw" and not res["patched"]
    assert res["memory"]["lean"]["source"] == "fallback" and res["memory"]["lean"]["activations"] > 0
    assert len(warnings_seen) == 3 and len(set(warnings_seen)) == 3  # once per piece, however often it is asked
    assert all("\n" not in w for w in warnings_seen)


def test_fallback_measure_agrees_with_the_profiler(tiny, text_file):
    """The stand-in saved-tensor count used while the profiler is missing agrees with it on a stock model."""
    from leanformer.train.budget import _fallback_measure, measure
    from leanformer.train.loop import Trainer, token_loss_sum

    trainer = Trainer(TrainConfig(**dict(tiny, data=str(text_file), recipe="stock")), verbose=False)
    try:
        figures = []
        for fn in (measure, _fallback_measure):
            model, _ = trainer.fresh_model(recipes.RECIPES["stock"])
            opt, _, _ = trainer.fresh_optimizer(model, "adamw")
            inputs, targets = trainer._device_batch(trainer.data.train, torch.arange(2))
            figures.append(fn(model, inputs, lambda out: token_loss_sum(out.logits, targets), opt))
        real, fallback = figures
        key = lambda m: (m.params, m.grads, m.optimizer_state, m.activations)  # noqa: E731
        assert key(real) == key(fallback) and real.activations > 0  # measured: equal to the byte on stock layers
    finally:
        trainer.close()
