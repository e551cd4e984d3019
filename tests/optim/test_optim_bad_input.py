"""Bad hyperparameters and inputs raise a clear error naming the parameter group."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leanformer.optim import APOLLO, APOLLOMini


def _groups(second: dict):
    return [{"params": [nn.Parameter(torch.randn(8, 4))]}, {"params": [nn.Parameter(torch.randn(6, 5))], **second}]


@pytest.mark.parametrize("second,kind,words", [
    (dict(rank=0), ValueError, "rank must be >= 1"),
    (dict(rank=-2), ValueError, "rank must be >= 1"),
    (dict(rank=2.5), TypeError, "rank must be an int"),
    (dict(rank=6), ValueError, "larger than the matrix"),
    (dict(scale_type="row"), ValueError, "scale_type"),
    (dict(proj="svd"), ValueError, "proj must be 'random'"),
    (dict(update_proj_gap=0), ValueError, "update_proj_gap"),
    (dict(norm_growth_limit=0.5), ValueError, "norm_growth_limit"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(scale=0), ValueError, "scale"),
    (dict(lowrank="yes"), ValueError, "lowrank"),
])
def test_bad_group(second, kind, words):
    with pytest.raises(kind, match=f"parameter group 1.*{words}"):
        APOLLO(_groups(second), lr=1e-3, rank=2)


def test_bad_defaults_named():
    with pytest.raises(ValueError, match="defaults: rank must be >= 1"):
        APOLLO([nn.Parameter(torch.randn(3, 3))], rank=0)


def test_one_dim_forced_lowrank():
    groups = [{"params": [nn.Parameter(torch.randn(4, 4))]}, {"params": [nn.Parameter(torch.randn(7))], "lowrank": True}]
    with pytest.raises(ValueError, match="parameter group 1, parameter 0 of shape \\(7,\\).*2 or more dims"):
        APOLLOMini(groups)


def test_complex_param():
    with pytest.raises(TypeError, match="parameter group 0.*complex"):
        APOLLOMini([nn.Parameter(torch.randn(4, 4, dtype=torch.complex64))])


def test_rank_checked_on_default_routing_but_not_opt_out():
    emb = nn.Parameter(torch.randn(10, 3))
    with pytest.raises(ValueError, match="rank 4 is larger"):
        APOLLO([emb], rank=4)
    APOLLO([{"params": [emb], "lowrank": False}], rank=4)  # opted out: fine


def test_sparse_grad():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = APOLLOMini([{"params": [nn.Parameter(torch.randn(4, 4))]}, {"params": emb.parameters()}])
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="parameter group 1: APOLLO does not support sparse"):
        opt.step()


def test_add_param_group_rejected_is_not_kept():
    opt = APOLLO([nn.Parameter(torch.randn(4, 4))], rank=2)
    with pytest.raises(ValueError, match="parameter group 1"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(4, 4))], "rank": 9})
    assert len(opt.param_groups) == 1
