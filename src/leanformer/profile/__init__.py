"""leanformer.profile: the memory picture of one training step.

``measure_step(model, inputs)`` runs one forward/backward (and optimizer step) and returns a
``StepMemoryReport``: parameters, gradients, optimizer state and the activations saved for backward, counted
once per storage and split per module and per kind of op. ``plot_reports`` draws several reports side by side.
See docs/profile.md.
"""
from __future__ import annotations

from .kinds import KINDS
from .measure import default_loss, measure_step
from .plot import plot_reports
from .report import StepMemoryReport
from .saved import saved_bytes

__all__ = ["KINDS", "StepMemoryReport", "default_loss", "measure_step", "plot_reports", "saved_bytes"]
