"""Scale-out on PyTorch's own engine: DDP or FSDP2 (`fully_shard`) under torchrun.

gloo on CPU, nccl on GPU. The loop stays the same for every mode; this module owns the process group, the
wrapping, the "skip gradient sync on this micro-batch" switch, and the collectives the loop needs.
DESIGN.md: DDP and FSDP2 both run across 2 CPU processes with gloo here.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    mode: str  # "none" | "ddp" | "fsdp2"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "none" and self.world > 1 or self.started_group


def default_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(mode: str) -> DistContext:
    """Join the torchrun process group for ``mode`` ("none" runs single-process)."""
    if mode == "none":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("launched by torchrun with several processes but --distributed is not set: "
                             "add --distributed ddp or --distributed fsdp2")
        return DistContext("none", device=default_device())
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(f"--distributed {mode} needs torchrun: torchrun --nproc_per_node N -m leanformer train ...")
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = default_device(local_rank)
    started = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        started = True
    return DistContext(mode, rank, world, local_rank, device, started)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP wrapper, or FSDP2 sharding in place (per decoder/encoder layer, then the root)."""
    if ctx.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ctx.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in _layer_blocks(model):
            fully_shard(block)
        fully_shard(model)
    return model


def _layer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated Transformer layers: the children of the longest ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


@contextlib.contextmanager
def grad_sync(model: torch.nn.Module, ctx: DistContext, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if enabled or ctx.mode == "none":
        yield
    elif ctx.mode == "ddp":
        with model.no_sync():
            yield
    else:  # fsdp2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.active:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_int(value: int, ctx: DistContext) -> int:
    """Rank 0's ``value`` on every rank."""
    if not ctx.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def is_dtensor(t) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def teardown(ctx: DistContext) -> None:
    if ctx.started_group:
        import torch.distributed as dist

        dist.destroy_process_group()
