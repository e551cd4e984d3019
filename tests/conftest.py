"""Shared test settings: the one tolerance table, seeds, and helpers every area uses."""
from __future__ import annotations

import os

import pytest
import torch

# One tolerance table (DESIGN.md, convention 9). A looser tolerance elsewhere must carry a comment saying why.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def saved_tensor_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn`` and count the bytes autograd saves for backward, once per unique storage (parameters included)."""
    from leanformer.profile import saved_bytes

    out, nbytes, _ = saved_bytes(fn, *args, **kwargs)
    return out, nbytes


@pytest.fixture
def kernel_policy_restored():
    """leanformer.quant's global kernel policy as it was before the test, whatever the test switched."""
    import dataclasses

    from leanformer.quant import get_policy, set_policy

    before = dataclasses.asdict(get_policy())
    yield get_policy()
    set_policy(**before)


@pytest.fixture(scope="module")
def ops():
    """leanformer.quant's compiled native kernels; the test is skipped where they cannot be built."""
    from leanformer.quant.native import native_ops, native_status

    loaded = native_ops()
    if loaded is None:
        pytest.skip(f"native kernels not built here: {native_status()}")
    return loaded
