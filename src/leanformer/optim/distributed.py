"""How APOLLO sees a parameter that may be a DTensor (FSDP2 ``fully_shard``).

Rule (documented in docs/optim.md): the projection and the scaling factors are those of the *full* matrix, so
a sharded run equals a single-process run up to summation order. FSDP2 shards dim 0 (rows of the 2-D view):

- m >= n: R = G @ P.T is row-local, so R, the moments and the per-row channel factors stay on their shard;
  only scalar sums (tensor-wise norms, the limiter's norm) are all-reduced.
- m <  n: R = P.T @ G sums over rows, so each rank computes its partial (r, n) and they are all-reduced;
  R and the moments are then replicated (r x n, small), and the column factors are local again.

Only 1-D device meshes with ``Shard(0)`` or ``Replicate()`` placements are supported; anything else raises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LocalView:
    """The local part of a parameter (and its gradient) as seen by the update."""

    param: torch.Tensor  # local tensor (plain), same storage as the parameter's shard
    grad: torch.Tensor
    rows: int  # global rows of the 2-D view
    cols: int  # global cols of the 2-D view
    row_offset: int  # global index of the first local row
    group: object | None  # process group to all-reduce over, or None when the whole matrix is local


def _dtensor_cls():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(t: torch.Tensor) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def local_view(param: torch.Tensor, grad: torch.Tensor, *, matrix: bool, where: str) -> LocalView:
    """Local tensors of ``param``/``grad``; for ``matrix=True`` also viewed as 2-D (dim 0 x the rest)."""
    shape = tuple(param.shape)  # global shape, also for a DTensor
    rows, cols = (shape[0], _prod(shape[1:])) if matrix else (_prod(shape), 1)
    if not is_dtensor(param):
        p, g = param, grad
        offset, group = 0, None
    else:
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        mesh, placements = param.device_mesh, tuple(param.placements)
        if not is_dtensor(grad) or tuple(grad.placements) != placements:
            raise ValueError(f"{where}: the gradient of a DTensor parameter must be a DTensor with the same placements")
        if mesh.ndim != 1 or not isinstance(placements[0], (Shard, Replicate)) or (
                isinstance(placements[0], Shard) and placements[0].dim != 0):
            raise ValueError(f"{where}: only 1-D meshes with Shard(0) or Replicate() are supported, got {placements}")
        p, g = param.to_local(), grad.to_local()
        if isinstance(placements[0], Replicate):
            offset, group = 0, None
        else:
            _, global_offset = compute_local_shape_and_global_offset(param.shape, mesh, placements)
            offset, group = int(global_offset[0]) if global_offset else 0, mesh.get_group()
    if matrix:
        # (m_loc, n); m_loc may be 0 on a rank. The parameter must be a view (it is updated in place); the
        # gradient is only read, so a non-contiguous one may be copied.
        p, g = p.view(p.shape[0], cols), g.reshape(g.shape[0], cols)
    return LocalView(p, g, rows, cols, offset, group)


def all_reduce_(t: torch.Tensor, group) -> torch.Tensor:
    """Sum ``t`` over ``group`` in place (no-op for ``None``)."""
    if group is not None:
        torch.distributed.all_reduce(t, group=group)
    return t


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out
