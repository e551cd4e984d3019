"""torchrun worker for test_optim_dist.py: trains a tiny model with APOLLO under DDP or FSDP2 (gloo, CPU).

Usage: torchrun --nproc_per_node 2 tests/optim/_optim_dist_worker.py {ddp|fsdp} OUT_PREFIX
Writes OUT_PREFIX.<rank>.pt: {config name: {param name: full tensor}}. ``train(None, ...)`` is the
single-process run the test compares against.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from leanformer.optim import APOLLO, APOLLOMini

STEPS, BATCH = 6, 8
# (name, optimizer class, kwargs): channel-wise APOLLO and APOLLO-Mini, batched and reference loops
CONFIGS = [
    ("apollo_foreach", APOLLO, dict(rank=2, update_proj_gap=2, foreach=True, weight_decay=0.01)),
    ("apollo_single", APOLLO, dict(rank=2, update_proj_gap=2, foreach=False, weight_decay=0.01)),
    ("mini_foreach", APOLLOMini, dict(update_proj_gap=2, foreach=True)),
    ("mini_single", APOLLOMini, dict(update_proj_gap=2, foreach=False)),
]


class Tiny(nn.Module):
    """Awkward shapes: odd row counts (uneven FSDP shards), tall (right) and wide (left) matrices."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(13, 8)  # (13, 8) right
        self.a = nn.Linear(8, 5)  # (5, 8) left
        self.b = nn.Linear(5, 11)  # (11, 5) right
        self.norm = nn.LayerNorm(11)
        self.c = nn.Linear(11, 3)  # (3, 11) left

    def forward(self, ids):
        h = self.emb(ids).mean(1)
        return self.c(self.norm(torch.tanh(self.b(torch.tanh(self.a(h))))))


def batch(step: int):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 13, (BATCH, 4), generator=gen), torch.randn(BATCH, 3, generator=gen)


def train(mode: str | None, cls, kwargs, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Tiny()
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for sub in (model.emb, model.a, model.b, model.c):
            fully_shard(sub, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = cls(model.parameters(), lr=3e-2, **kwargs)
    per = BATCH // world
    for step in range(STEPS):
        ids, target = batch(step)
        ids, target = ids[rank * per:(rank + 1) * per], target[rank * per:(rank + 1) * per]
        opt.zero_grad()
        nn.functional.mse_loss(model(ids), target).backward()
        opt.step()
    module = model.module if mode == "ddp" else model
    out = {}
    for name, p in module.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


def main() -> None:
    import torch.distributed as dist

    mode, prefix = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: train(mode, cls, kw, rank, world) for name, cls, kw in CONFIGS}
    torch.save(results, f"{prefix}.{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
