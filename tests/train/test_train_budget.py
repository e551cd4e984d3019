"""The memory-budget planner never returns a micro-batch whose measured step exceeds the budget."""
from __future__ import annotations

import random

import pytest

from train_helpers import one_thread, tiny, text_file  # noqa: F401  (pytest fixtures)
from leanformer.train.budget import BudgetError, StepMemory, divisors, parse_size, plan_batch
from leanformer.train.config import TrainConfig
from leanformer.train.loop import Trainer


def test_parse_size():
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("4096") == 4096
    for bad in ("", "two GiB", "3 parsecs", "0B", "-1GiB"):
        with pytest.raises(BudgetError):
            parse_size(bad)


def _fake(fixed: int, per: int, bump: dict | None = None, jitter: float = 0.0, seed: int = 0):
    """A measure_fn whose activations grow linearly, plus per-batch surprises the line cannot predict."""
    rng = random.Random(seed)
    calls = []

    def measure(b: int) -> StepMemory:
        calls.append(b)
        act = per * b + (bump or {}).get(b, 0) + int(rng.random() * jitter * per * b)
        return StepMemory(fixed // 2, fixed // 4, fixed // 4, act, "fake")

    return measure, calls


def test_linear_cost_picks_the_largest_divisor_that_fits():
    measure, calls = _fake(fixed=1000, per=100)
    plan = plan_batch(24, budget=1000 + 100 * 9, measure_fn=measure)
    assert plan.micro_batch == 8 and plan.accum == 3  # divisors of 24: ... 6, 8, 12; 12 would need 2200
    assert plan.measured.total <= plan.budget
    assert set(calls) <= set(divisors(24))


def test_superlinear_surprise_is_caught_by_measuring():
    measure, _ = _fake(fixed=1000, per=100, bump={8: 10_000})  # batch 8 costs far more than the line says
    plan = plan_batch(24, budget=1900, measure_fn=measure)
    assert plan.micro_batch == 6 and plan.measured.total <= 1900


@pytest.mark.parametrize("seed", range(40))
def test_never_over_budget_on_random_costs(seed):
    rng = random.Random(seed)
    batch = rng.choice([1, 6, 12, 16, 30, 64])
    bumps = {d: rng.randrange(0, 5_000) for d in divisors(batch) if rng.random() < 0.3 and d > 1}
    measure, _ = _fake(fixed=rng.randrange(100, 5000), per=rng.randrange(10, 500), bump=bumps, jitter=0.5, seed=seed)
    one = measure(1).total
    budget = int(one * rng.uniform(1.0, 6.0))
    plan = plan_batch(batch, budget, measure)
    assert plan.measured.total <= budget
    assert batch % plan.micro_batch == 0
    assert all(total <= budget for b, total in plan.tried if b == plan.micro_batch)


def test_budget_below_batch_one_raises():
    measure, _ = _fake(fixed=1000, per=100)
    with pytest.raises(BudgetError, match="too small for batch 1"):
        plan_batch(8, budget=1099, measure_fn=measure)


def test_real_model_plan_fits_when_measured_again(text_file, tiny):
    """End to end with the profiler: the chosen micro-batch, measured afresh, is within the budget."""
    cfg = TrainConfig(**dict(tiny, batch=8, data=str(text_file)))
    trainer = Trainer(cfg, verbose=False)
    try:
        one = trainer.measure_recipe(trainer.recipe, cfg.optimizer_name, 1)
        four = trainer.measure_recipe(trainer.recipe, cfg.optimizer_name, 4)
        assert four.activations > one.activations  # the figures do grow with the batch
        budget = (one.total + four.total) // 2  # fits 1 and 2 but (by linearity) not 4
        trainer.cfg = cfg.replace(memory_budget=budget)
        plan = trainer.plan()
        assert plan.measured.total <= budget
        assert plan.micro_batch in (1, 2) and plan.accum == 8 // plan.micro_batch
        again = trainer.measure_recipe(trainer.recipe, cfg.optimizer_name, plan.micro_batch)
        assert again.total <= budget
    finally:
        trainer.close()
