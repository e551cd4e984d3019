"""``measure_step``: run one training step of any ``nn.Module`` and report where its bytes go.

Parameters, gradients and optimizer state are counted once per unique storage after the step; tensors saved
for backward are recorded during the forward by ``SavedTensorTracker`` (saved_tensors_hooks + module hooks +
a dispatch mode that only observes). The step runs exactly as it would without profiling: the hooks return
every tensor unchanged, so outputs and gradients are bit-identical (tested).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable

import torch

from .kinds import KINDS
from .report import StepMemoryReport
from .storage import unique_bytes
from .tracker import SavedTensorTracker, _flat_tensors, is_compiled

_SCALARS = (bool, int, float, str, type(None))


def _check_value(where: str, value: Any) -> None:
    """Reject the usual mistakes (numpy arrays, lists of numbers) before the model sees them."""
    if isinstance(value, torch.Tensor) or isinstance(value, _SCALARS):
        return
    if type(value).__module__.startswith("numpy"):
        raise TypeError(f"{where} is a numpy {type(value).__name__}, not a torch.Tensor: convert it with torch.as_tensor")
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (bool, int, float)) for v in value):
            raise TypeError(f"{where} is a {type(value).__name__} of Python numbers, not a torch.Tensor: "
                            "convert it with torch.tensor (tokenizers: return_tensors='pt')")
        for i, v in enumerate(value):
            _check_value(f"{where}[{i}]", v)


def split_inputs(inputs: Any) -> tuple[tuple, dict]:
    """A tensor, a tuple/list of positional arguments, or a mapping of keyword arguments -> (args, kwargs)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    elif isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    else:
        raise TypeError("inputs must be a torch.Tensor, a tuple of positional arguments or a dict of keyword "
                        f"arguments, got {type(inputs).__name__}")
    for i, v in enumerate(args):
        _check_value(f"inputs[{i}]", v)
    for k, v in kwargs.items():
        _check_value(f"inputs[{k!r}]", v)
    if not _flat_tensors(list(args) + list(kwargs.values())):
        raise TypeError("inputs hold no torch.Tensor: nothing to run the model on")
    return args, kwargs


def default_loss(output: Any) -> torch.Tensor:
    """``output.loss`` when the output carries one (Hugging Face ``ModelOutput`` with labels given); otherwise
    the mean square of the first floating-point tensor in the output (``logits``, ``last_hidden_state``, or the
    output itself), computed in fp32. Its value is meaningless; it only gives every output a gradient."""
    if not isinstance(output, torch.Tensor):
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            return loss
        if isinstance(output, Mapping):
            output = list(output.values())
    for t in _flat_tensors(output):
        if t.is_floating_point() or t.is_complex():
            return t.float().pow(2).mean()
    raise TypeError(f"the model's output ({type(output).__name__}) holds no floating-point tensor to build a "
                    "default loss from: pass loss_fn=")


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}: reduce it (e.g. .mean())")
    if not loss.requires_grad:
        raise ValueError("loss does not require grad: the model ran without autograd (torch.no_grad? "
                         "inference_mode?) or the loss does not depend on a trainable parameter")
    return loss


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return unique_bytes(t for state in optimizer.state.values() for t in _flat_tensors(dict(state)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(model: torch.nn.Module, inputs: Any, *, loss_fn: Callable[[Any], torch.Tensor] | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> StepMemoryReport:
    """Run one forward + backward (+ ``optimizer.step()``) of ``model`` on ``inputs`` and measure its memory.

    ``inputs``: a tensor, a tuple of positional arguments, or a dict of keyword arguments, as the model takes
    them. ``loss_fn(output) -> scalar tensor``; default ``default_loss``. The model runs in whatever mode it
    is in (call ``model.train()`` first for training figures). Gradients accumulate into ``.grad`` and the
    optimizer steps, exactly as in a training step; nothing else about the model changes.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = split_inputs(inputs)
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        raise ValueError(f"{type(model).__name__} has no trainable parameters (none requires grad): "
                         "there is no training step to profile")
    device = params[0].device
    notes = _notes(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    _sync(device)
    t0 = time.perf_counter()
    with SavedTensorTracker(model) as tracker:
        output = model(*args, **kwargs)
        loss = _check_loss((loss_fn or default_loss)(output))
    _sync(device)
    forward_s = time.perf_counter() - t0
    kinds = tracker.kinds(loss)  # graph walk: not part of the timed step
    del output
    t1 = time.perf_counter()
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    _sync(device)
    backward_s = time.perf_counter() - t1

    if tracker.CTX_MODULE in {rec.module for rec in tracker.records.values()}:
        notes.append(f"some tensors are held as custom autograd.Function ctx attributes (not save_for_backward); "
                     f"they are counted under {tracker.CTX_MODULE!r}")
    by_module: dict[str, int] = {}
    by_module_kind: dict[str, dict[str, int]] = {}
    by_kind = {k: 0 for k in KINDS}
    for key, rec in tracker.records.items():
        kind = kinds[key]
        by_module[rec.module] = by_module.get(rec.module, 0) + rec.nbytes
        per = by_module_kind.setdefault(rec.module, {})
        per[kind] = per.get(kind, 0) + rec.nbytes
        by_kind[kind] += rec.nbytes
    return StepMemoryReport(
        params_bytes=unique_bytes(params),
        grads_bytes=unique_bytes(p.grad for p in params if p.grad is not None),
        optimizer_state_bytes=optimizer_state_bytes(optimizer),
        saved_activation_bytes=sum(rec.nbytes for rec in tracker.records.values()),
        by_module=by_module, by_kind=by_kind, by_module_kind=by_module_kind,
        saved_tensor_count=len(tracker.records),
        wall_time_s=forward_s + backward_s,
        device_peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        model=type(model).__name__, notes=notes,
    )


def _notes(model: torch.nn.Module) -> list[str]:
    notes = []
    if is_compiled(model):
        notes.append("compiled model: tensors saved by a compiled region are attributed to the module that called "
                     "it, and its saving node is CompiledFunctionBackward, so their kind falls back to the module's")
    if not model.training:
        notes.append("the model is in eval mode (dropout off): call model.train() for training figures")
    # transformers v5 renamed is_gradient_checkpointing (which now warns) to is_activation_checkpointing
    attr = next((a for a in ("is_activation_checkpointing", "is_gradient_checkpointing") if hasattr(type(model), a)), None)
    if attr is not None and getattr(model, attr):
        notes.append("gradient checkpointing is on: tensors held inside checkpointed regions are recomputed in "
                     "backward and are not counted; only what the regions' boundaries save is")
    return notes
