"""Under torch.compile the step runs eagerly (torch.compiler.disable): no graph per step, same result as eager."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leanformer.optim import APOLLO


@pytest.mark.slow
def test_compiled_caller_does_not_recompile_per_step():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    models = [nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.Linear(10, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [APOLLO(m.parameters(), lr=1e-2, rank=2, update_proj_gap=2) for m in models]

    def run(opt, grads):
        opt.step()
        return grads[0].sum() * 2  # something for dynamo to compile around the step

    compiled = torch.compile(run)
    graphs = []
    for t in range(6):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for m in models:
            for p, g in zip(m.parameters(), grads):
                p.grad = g.clone()
        compiled(opts[0], grads)
        run(opts[1], grads)
        graphs.append(counters["stats"].get("unique_graphs", 0))
    assert graphs[-1] == graphs[1], graphs  # no new graph after the first steps
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)
