"""Record every tensor autograd saves for backward during one forward: once per storage, with where and why.

Three observers run together while the forward executes, none of which touches a tensor's values:

* ``torch.autograd.graph.saved_tensors_hooks``: the pack hook sees each saved tensor (and returns it unchanged,
  so numerics and the graph are untouched). Bytes are counted per unique ``untyped_storage()``: views of one
  storage and a tensor saved by several ops count once; storages of parameters and buffers are skipped.
* forward pre/post hooks on every module keep a stack of running modules, so each saved tensor is attributed
  to the innermost module whose forward is running (a module called twice accumulates under one name; the
  post hook is ``always_call`` and pops by identity, so an exception cannot leave the stack skewed).
* a ``TorchDispatchMode`` remembers which storages were last filled by a random op (``bernoulli_``), which is
  how CPU ``F.dropout`` builds its fp32 mask before a plain ``mul`` saves it.

After the forward, ``kinds()`` walks the autograd graph from the loss and reads each node's saved tensors
(``_saved_*`` attributes, or ``saved_tensors`` for custom Functions) to learn which op saved each storage.
Method after actmem.md section 4 (``measure_saved.py``), rewritten for this package.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .kinds import classify
from .storage import storages

_RANDOM_FILL_OPS = ("bernoulli", "native_dropout", "rand", "randn", "uniform", "normal")


@dataclass
class SavedRecord:
    """One storage saved for backward."""

    nbytes: int
    module: str  # qualified name of the innermost running module ("" = the root model)
    module_type: str | None  # its class name; None when saved outside any module's forward
    random_filled: bool
    savers: set[str] = field(default_factory=set)  # autograd node class names that saved it


class _RandomFillMode(TorchDispatchMode):
    """Marks storages whose content came from a random op; a fresh allocation clears the mark."""

    def __init__(self):
        super().__init__()
        self.random: set[tuple[str, int]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        is_random = name.startswith(_RANDOM_FILL_OPS)
        in_keys = {key for a in _flat_tensors(args) + _flat_tensors(kwargs) for key, _ in storages(a)}
        for key, _ in (s for t in _flat_tensors(out) for s in storages(t)):
            if is_random:
                self.random.add(key)
            elif key not in in_keys:  # a new allocation: whatever lived at this address before is gone
                self.random.discard(key)
            # in-place ops and views (key in in_keys) keep the storage's mark: bernoulli_ then div_ is a mask
        return out


def _flat_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _flat_tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _flat_tensors(x)]
    return []


class SavedTensorTracker:
    """Use as a context manager around the forward (and loss); read ``records`` / ``kinds()`` afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        # Any active TorchDispatchMode makes torch.compile fall back to eager, which would profile a different
        # (eager) saved set; for compiled models the mode is skipped (its only job is spotting CPU dropout masks).
        self.compiled = is_compiled(model)
        self.records: dict[tuple[str, int], SavedRecord] = {}
        self.pack_events = 0
        self._excluded = {key for t in [*model.parameters(), *model.buffers()] for key, _ in storages(t)}
        self._stack: list[tuple[torch.nn.Module, str]] = []
        self._mode = _RandomFillMode()
        self._exit = contextlib.ExitStack()

    # -- module stack ---------------------------------------------------------------------------------
    def _hookable_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """Every module except those dynamo would trace: a hook that mutates our stack inside a compiled
        region breaks tracing, so compiled regions are observed from their nearest uncompiled caller."""
        out: list[tuple[str, torch.nn.Module]] = []
        seen: set[int] = set()  # a module registered under two names gets one hook (its first name)

        def visit(name: str, module: torch.nn.Module) -> None:
            if id(module) in seen:
                return
            seen.add(id(module))
            compiled_call = getattr(module, "_compiled_call_impl", None) is not None  # module.compile()
            if not compiled_call:
                out.append((name, module))
            if compiled_call or type(module).__name__ == "OptimizedModule":  # torch.compile(module)
                return
            for child_name, child in module.named_children():
                visit(f"{name}.{child_name}" if name else child_name, child)

        visit("", self.model)
        return out

    def _install_module_hooks(self) -> None:
        for name, module in self._hookable_modules():
            def pre(mod, _inputs, _name=name):
                self._stack.append((mod, _name))

            def post(mod, _inputs, _output):
                for i in range(len(self._stack) - 1, -1, -1):  # pop this module (and anything it left behind)
                    if self._stack[i][0] is mod:
                        del self._stack[i:]
                        break

            self._exit.callback(module.register_forward_pre_hook(pre).remove)
            self._exit.callback(module.register_forward_hook(post, always_call=True).remove)

    # -- saved tensors --------------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        self.pack_events += 1
        mod, name = self._stack[-1] if self._stack else (None, "(outside model)")
        for key, nbytes in storages(t):
            if key in self._excluded or key in self.records or nbytes == 0:
                continue
            self.records[key] = SavedRecord(nbytes=nbytes, module=name,
                                            module_type=type(mod).__name__ if mod is not None else None,
                                            random_filled=key in self._mode.random)
        return t

    def __enter__(self) -> "SavedTensorTracker":
        self._install_module_hooks()
        self._exit.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, _identity))
        if not self.compiled:
            self._exit.enter_context(self._mode)
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()
        self._stack.clear()

    # -- attribution ----------------------------------------------------------------------------------
    def kinds(self, root: torch.Tensor) -> dict[tuple[str, int], str]:
        """Walk the graph behind ``root`` (before backward frees it) and classify every recorded storage."""
        seen: set[int] = set()
        todo = [root.grad_fn] if root.grad_fn is not None else []
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for key, _ in (s for t in _node_saved_tensors(node) for s in storages(t)):
                rec = self.records.get(key)
                if rec is not None:
                    rec.savers.add(type(node).__name__)
            self._record_ctx_attributes(node)
            todo.extend(child for child, _ in node.next_functions if child is not None)
        return {key: classify(rec.savers, rec.module_type, rec.random_filled) for key, rec in self.records.items()}


    CTX_MODULE = "(autograd.Function ctx attributes)"

    def _record_ctx_attributes(self, node) -> None:
        """Tensors a custom ``autograd.Function`` keeps as ``ctx.<name> = tensor`` instead of through
        ``save_for_backward`` never reach the pack hook, yet stay alive until backward: count them too, under
        a pseudo-module, so a layer cannot look leaner than it is."""
        attrs = getattr(node, "__dict__", None)
        if not attrs:
            return
        for key, nbytes in (s for t in _flat_tensors(list(attrs.values())) for s in storages(t)):
            if key in self._excluded or key in self.records or nbytes == 0:
                continue
            self.records[key] = SavedRecord(nbytes=nbytes, module=self.CTX_MODULE, module_type=None,
                                            random_filled=key in self._mode.random, savers={type(node).__name__})


def is_compiled(model: torch.nn.Module) -> bool:
    """``torch.compile(model)`` (an ``OptimizedModule``) or ``module.compile()`` anywhere inside."""
    return any(type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None
               for m in model.modules())


def _identity(x):
    return x


def _node_saved_tensors(node) -> list[torch.Tensor]:
    """Tensors an autograd node holds for backward (built-in ``_saved_*`` fields or a custom Function's)."""
    found: list[torch.Tensor] = []
    names = [a for a in dir(node) if a.startswith("_saved_") and not a.endswith(("_sym_sizes", "_sym_strides"))]
    if hasattr(node, "saved_tensors"):
        names.append("saved_tensors")
    for attr in names:
        try:
            value = getattr(node, attr)
        except (RuntimeError, AttributeError):  # freed already, or undefined optional tensor
            continue
        found.extend(_flat_tensors(value))
    return found
