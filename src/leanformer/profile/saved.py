"""The smallest saved-for-backward counter: bytes autograd saves while running a function, once per storage.

``measure_step`` is the full picture (per module, per kind, optimizer state); this is the one-liner that
tests, the exact-minimum checks and the layer benchmarks assert figures with.
"""
from __future__ import annotations

import torch


def saved_bytes(fn, *args, exclude: tuple[torch.Tensor, ...] = (), **kwargs) -> tuple[object, int, list]:
    """Run ``fn`` and count bytes autograd saves for backward, once per storage, skipping ``exclude``'s
    storages (parameters, shared inputs). Returns (output, bytes, [(shape, dtype, nbytes), ...])."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, tuple] = {}

    def pack(t: torch.Tensor):
        if t.device.type != "meta" and t.numel() > 0:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in skip and ptr not in seen:
                seen[ptr] = (tuple(t.shape), t.dtype, st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, sum(v[2] for v in seen.values()), list(seen.values())
