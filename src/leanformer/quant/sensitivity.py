"""Data-free mixed precision: keep the Linears whose low-bit rounding hurts the output most at high bits.

Sensitivity of layer i = 1 - cosine(output of the model with ONLY layer i at low bits, float output), per
token, averaged, on synthetic inputs (uniform random token ids for a ``transformers`` model, or the caller's
``example_inputs``). No data is read. Then a greedy knapsack: start with every layer at low bits and
upgrade layers in order of sensitivity per extra byte while the Linear-weight budget allows.

This is the "one layer at a time" study of the research note (value and FFN-in projections, and the last
layers, came out most sensitive on MiniLM) turned into an automatic, data-free pass.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn as nn

from .calib import input_moments, run_model, synthetic_inputs
from .api import LayerReport, QuantReport, _packed_bytes, float_weight_bytes, fuse_for_inference_, quantize_weight
from .configs import MixedPrecisionConfig
from .modules import QuantizedLinear

__all__ = ["layer_sensitivity", "plan_mixed", "quantize_mixed_"]


def _output(model: nn.Module, inputs) -> torch.Tensor:
    out = run_model(model, inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def _cosine_loss(ref: torch.Tensor, test: torch.Tensor) -> float:
    ref, test = ref.float().flatten(0, -2), test.float().flatten(0, -2)  # (T, H)
    return float(1 - torch.nn.functional.cosine_similarity(ref, test, dim=-1).mean())


@torch.no_grad()
def layer_sensitivity(model: nn.Module, lows: dict[str, torch.Tensor], example_inputs=None) -> dict[str, float]:
    """``lows``: name -> dequantized low-bit weight. Returns name -> output distortion (higher = worse)."""
    # 4 x 16 random tokens (a quarter of the moments pass): the ranking only needs relative distortions, and
    # 37 MiniLM forwards drop from 2.7 s to ~0.7 s. Measured: a slightly different plan, same fidelity
    # (mixed 8.5 MB: mean cosine 0.9946 vs 0.9948 with 8 x 32 tokens).
    inputs = example_inputs if example_inputs is not None else synthetic_inputs(model, batch=4, seq=16)
    prefix = _BlockPrefix(model)
    with prefix.recording():
        ref = _output(model, inputs)
    prefix.verify(lambda: _output(model, inputs), ref)
    scores = {}
    for name, w_low in lows.items():
        weight = model.get_submodule(name).weight
        saved = weight.data
        weight.data = w_low.to(saved.dtype)
        try:
            with prefix.replayed_before(name):
                scores[name] = _cosine_loss(ref, _output(model, inputs))
        finally:
            weight.data = saved
    return scores


class _Replay(nn.Module):
    """Stands in for a block whose input is unchanged: returns what the block returned in the reference run."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


class _BlockPrefix:
    """Skips the blocks in front of the layer being measured.

    Lowering one Linear of block b changes nothing before block b, so blocks 0..b-1 are replaced by their
    outputs from the reference run (about 40 % fewer block evaluations over MiniLM's 37 Linears). The blocks
    are the longest ``nn.ModuleList`` of one module type (``encoder.layer``, ``model.layers``, ...). Used only
    if every block ran exactly once in the reference forward and a replayed forward reproduces the reference
    output bit for bit (``verify``); otherwise every forward runs in full, as before.
    """

    def __init__(self, model: nn.Module):
        lists = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1]
        self.name, self.blocks = max(lists, key=lambda nm: len(nm[1])) if lists else ("", None)
        self.outputs: dict[int, list] = {}

    @contextlib.contextmanager
    def recording(self):
        if self.blocks is None:
            yield
            return
        hooks = [blk.register_forward_hook(lambda m, a, out, i=i: self.outputs.setdefault(i, []).append(out))
                 for i, blk in enumerate(self.blocks)]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
        if any(len(self.outputs.get(i, ())) != 1 for i in range(len(self.blocks))):
            self.blocks = None  # a block skipped or reused (weight sharing): no fixed prefix to replay

    def verify(self, forward, ref: torch.Tensor) -> None:
        if self.blocks is None:
            return
        with self.replayed_up_to(len(self.blocks) - 1):
            ok = torch.equal(forward(), ref)
        if not ok:  # e.g. a later block changed a cached output in place
            self.blocks = None

    def replayed_before(self, linear_name: str):
        if self.blocks is None or not linear_name.startswith(f"{self.name}."):
            return contextlib.nullcontext()
        return self.replayed_up_to(int(linear_name[len(self.name) + 1:].split(".")[0]))

    @contextlib.contextmanager
    def replayed_up_to(self, b: int):
        originals = [self.blocks[i] for i in range(b)]
        for i in range(b):
            self.blocks[i] = _Replay(self.outputs[i][0])
        try:
            yield
        finally:
            for i, blk in enumerate(originals):
                self.blocks[i] = blk


def plan_mixed(sens: dict[str, float], low_bytes: dict[str, int], high_bytes: dict[str, int],
               budget_bytes: float) -> set[str]:
    """Names to keep at high precision: greedy by sensitivity per extra byte within the budget."""
    total = sum(low_bytes.values())
    if total > budget_bytes:
        raise ValueError(f"budget {budget_bytes / 1e6:.2f} MB is below the all-low-bit size {total / 1e6:.2f} MB")
    order = sorted(sens, key=lambda n: sens[n] / max(high_bytes[n] - low_bytes[n], 1), reverse=True)
    high = set()
    for name in order:
        extra = high_bytes[name] - low_bytes[name]
        if total + extra <= budget_bytes:
            high.add(name)
            total += extra
    return high


@torch.no_grad()
def quantize_mixed_(model: nn.Module, config: MixedPrecisionConfig, *, filter_fn=None,
                    example_inputs=None) -> QuantReport:
    start = time.perf_counter()
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and (filter_fn is None or filter_fn(m, n))]
    if not targets:
        raise ValueError("MixedPrecisionConfig: no nn.Linear matched")
    moments = {}
    if config.low.act_weighting or config.high.act_weighting:
        moments = input_moments(model, [n for n, _ in targets], example_inputs)
    imp = lambda cfg, n: moments.get(n) if cfg.act_weighting else None  # noqa: E731
    lows = {n: quantize_weight(m.weight, config.low, imp(config.low, n)) for n, m in targets}
    highs = {n: quantize_weight(m.weight, config.high, imp(config.high, n)) for n, m in targets}
    sens = layer_sensitivity(model, {n: q.dequantize() for n, q in lows.items()}, example_inputs)
    mods = {n: m for n, m in targets}
    new = {n: QuantizedLinear.from_float(mods[n], q) for n, q in lows.items()}
    low_bytes = {n: _packed_bytes(m) for n, m in new.items()}
    high_mods = {n: QuantizedLinear.from_float(mods[n], q) for n, q in highs.items()}
    high_bytes = {n: _packed_bytes(m) for n, m in high_mods.items()}
    keep = plan_mixed(sens, low_bytes, high_bytes, config.budget_mb * 1e6)
    report = QuantReport()
    for name, mod in targets:
        chosen = high_mods[name] if name in keep else new[name]
        model.set_submodule(name, chosen)
        report.layers.append(LayerReport(name, "Linear", chosen.bits, chosen.group_size, chosen.format,
                                         float_weight_bytes(mod), _packed_bytes(chosen)))
    fuse_for_inference_(model, report, fuse=config.low.fuse and config.high.fuse,
                        short_attention=config.low.short_attention and config.high.short_attention)
    report.seconds = time.perf_counter() - start
    return report
