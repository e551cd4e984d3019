"""Memory-budget planning: the largest micro-batch whose *measured* training step fits a byte budget.

A step's memory is counted as params + grads + optimizer state + activations saved for backward, the four
figures `leanformer.profile.measure_step` reports (issue 2). The planner predicts from a batch-1
measurement (saved activations grow linearly with the batch), then measures every candidate it would
return and steps down while a measurement is over budget, so the plan it returns was measured to fit.
Gradient accumulation (local batch / micro-batch steps) keeps the requested global batch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from leanformer.profile import measure_step

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


class BudgetError(ValueError):
    """The budget cannot be parsed, or not even a batch of one fits it."""


def parse_size(text: str) -> int:
    """'2GiB' -> 2147483648. Decimal units (GB) are powers of 1000; binary (GiB) and bare letters (G) of 1024."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise BudgetError(f"cannot read memory size {text!r}: use a number with a unit, e.g. 2GiB, 512MiB, 1.5GB")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < 1:
        raise BudgetError(f"memory size {text!r} must be positive")
    return value


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


@dataclass(frozen=True)
class StepMemory:
    params: int
    grads: int
    optimizer_state: int
    activations: int  # saved for backward
    source: str = "leanformer.profile"  # who measured it: shown in the memory table

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer_state + self.activations

    def describe(self) -> str:
        return (f"{fmt_bytes(self.total)} (params {fmt_bytes(self.params)}, grads {fmt_bytes(self.grads)}, "
                f"optimizer {fmt_bytes(self.optimizer_state)}, activations {fmt_bytes(self.activations)})")


def measure(model: torch.nn.Module, inputs: dict, loss_fn: Callable, optimizer) -> StepMemory:
    """One training step of ``model`` measured by ``leanformer.profile.measure_step``.

    ``loss_fn(outputs) -> scalar``. The step runs ``optimizer.step()``: pass a throwaway model copy.
    """
    rep = measure_step(model, inputs, loss_fn=loss_fn, optimizer=optimizer)
    return StepMemory(int(rep.params_bytes), int(rep.grads_bytes), int(rep.optimizer_state_bytes),
                      int(rep.saved_activation_bytes))


@dataclass
class Plan:
    budget: int
    local_batch: int  # sequences per rank per optimizer step
    micro_batch: int
    measured: StepMemory  # the chosen micro-batch's measured step
    tried: list[tuple[int, int]] = field(default_factory=list)  # (micro-batch, measured total bytes)

    @property
    def accum(self) -> int:
        return self.local_batch // self.micro_batch

    def describe(self) -> str:
        tried = ", ".join(f"b{b}={fmt_bytes(t)}" for b, t in self.tried)
        return (f"memory budget {fmt_bytes(self.budget)}: micro-batch {self.micro_batch} x {self.accum} accumulation "
                f"steps = {self.local_batch} per rank; measured step {self.measured.describe()} [tried {tried}]")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_batch(local_batch: int, budget: int, measure_fn: Callable[[int], StepMemory], *,
               max_measurements: int = 6) -> Plan:
    """Largest divisor ``b`` of ``local_batch`` whose measured step ``measure_fn(b).total <= budget``."""
    results: dict[int, StepMemory] = {1: measure_fn(1)}
    one = results[1]
    if one.total > budget:
        raise BudgetError(f"memory budget {fmt_bytes(budget)} is too small for batch 1: one step needs {one.describe()}")
    cands = divisors(local_batch)

    def predict(b: int) -> float:  # linear in b, through the batch-1 point and the largest measured fit
        fitting = sorted(k for k, m in results.items() if m.total <= budget)
        b1 = fitting[-1]
        if b1 == 1:  # only batch 1 known: activations are the part that grows
            return one.total + one.activations * (b - 1)
        slope = (results[b1].total - one.total) / (b1 - 1)
        return results[b1].total + slope * (b - b1)

    def plausible(b: int) -> bool:  # memory grows with the batch: nothing at or above a failure can fit
        failed = [k for k, m in results.items() if m.total > budget]
        # 5% slack: fixed costs make the line slightly pessimistic; a measurement decides anyway
        return predict(b) <= budget * 1.05 and (not failed or b < min(failed))

    def fits(b: int) -> bool:
        if b not in results:
            results[b] = measure_fn(b)
        return results[b].total <= budget

    best = 1
    guess = max([b for b in cands if plausible(b)], default=1)
    while guess > best and len(results) < max_measurements:
        if fits(guess):
            best = guess
        candidates = [b for b in cands if b > best and plausible(b)]
        guess = candidates[-1] if candidates else best
    tried = sorted((b, m.total) for b, m in results.items())
    return Plan(budget, local_batch, best, results[best], tried)
