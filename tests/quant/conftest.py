"""Fixtures shared by the quantization tests."""
import pytest

from leanformer.quant.native import native_ops, native_status


@pytest.fixture(scope="module")
def ops():
    """The compiled native kernels; the test is skipped where they cannot be built."""
    loaded = native_ops()
    if loaded is None:
        pytest.skip(f"native kernels not built here: {native_status()}")
    return loaded
