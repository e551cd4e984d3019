"""The plain-loop paths of the short-attention, residual-norm and W4A8 unpack kernels: built here without AVX512
(-march=x86-64-v2) into a separate extension and checked against the same references as the vector paths,
so CPUs without AVX512 run tested code too. Slow: the build takes ~30-60 s."""
import platform

import pytest
import torch

from leanformer.quant.attention import ABS_BOUND, reference_attention
from leanformer.quant.residual_norm import norm_reference

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 build flags")]

_BINDING = """
#include "native_api.h"
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("short_attention", &short_attention);
  m.def("residual_layer_norm", &residual_layer_norm);
  m.def("unpack_w4a8", &unpack_w4a8);
  m.def("vnni_int8_status", &vnni_int8_status);
}
"""


@pytest.fixture(scope="module")
def plain_ops(tmp_path_factory):
    from pathlib import Path

    from torch.utils.cpp_extension import load

    import leanformer.quant as quant

    csrc = Path(quant.__file__).parent / "csrc"
    build = tmp_path_factory.mktemp("portable")
    (build / "binding.cpp").write_text(_BINDING)
    try:
        return load(name="leanformer_portable_test", build_directory=str(build),
                    sources=[str(build / "binding.cpp"), str(csrc / "short_attention.cpp"),
                             str(csrc / "residual_norm.cpp"), str(csrc / "w4a8_unpack.cpp"),
                             # (w4a8_unpack.cpp calls their products: built as stubs)
                             str(csrc / "amx_int8.cpp"), str(csrc / "vnni_int8.cpp")],
                    extra_cflags=["-O2", "-march=x86-64-v2", "-ffp-contract=off", "-fopenmp"],
                    extra_include_paths=[str(csrc)], verbose=False)
    except Exception as exc:  # no compiler here: nothing to test
        pytest.skip(f"cannot build the portable extension: {exc}")


def test_plain_attention_matches_the_reference(plain_ops):
    gen = torch.Generator().manual_seed(0)
    for b, h, sq, sk, d in ((2, 3, 5, 7, 24), (1, 2, 18, 33, 40), (2, 1, 1, 1, 1)):
        q, k, v = (torch.randn(b, h, n, d, generator=gen) for n in (sq, sk, sk))
        mask = torch.rand(b, 1, sq, sk, generator=gen) < 0.6
        mask[..., 0] = True
        for m in (None, mask, torch.zeros(b, 1, sq, sk).masked_fill(~mask, float("-inf"))):
            got = plain_ops.short_attention(q, k, v, torch.empty(0) if m is None else m, 0.3)
            assert (got - reference_attention(q, k, v, m, scale=0.3)).abs().max() <= ABS_BOUND


def test_plain_residual_norm_matches_the_reference(plain_ops):
    gen = torch.Generator().manual_seed(1)
    for m, n in ((7, 3), (33, 384), (5, 1000)):
        x, r = torch.randn(m, n, generator=gen), torch.randn(m, n, generator=gen)
        w, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        out, codes, scale, finite = plain_ops.residual_layer_norm(x, r, w, b, 1e-5, True)
        ref, bound = norm_reference(x, r, w, b, 1e-5)
        assert bool(finite) and ((out.double() - ref).abs() <= bound).all()
        want = torch.round(out / scale).clamp(-127, 127).to(torch.int8)  # codes of the plain per-row quantizer
        assert (codes.int() - want.int()).abs().max() <= 1


@pytest.mark.parametrize("gs,symmetric", [(32, False), (64, True), (None, False)])
def test_plain_w4a8_unpack_equals_the_definition(plain_ops, gs, symmetric):
    from leanformer.quant.amx import pack_amx_weight
    from leanformer.quant.w4a8 import probe_layer, requantized_weight, w4a8_tables

    mod = probe_layer(48, 192, gs, symmetric, torch.Generator().manual_seed(2))
    codes, zero, scale, inv, _ = w4a8_tables(mod)
    got = plain_ops.unpack_w4a8(codes, zero, scale, inv, 192 if gs is None else gs)
    assert torch.equal(got, pack_amx_weight(requantized_weight(mod)[0]))


def test_the_vnni_kernel_built_without_vnni_says_so(plain_ops):
    assert "built without AVX512-VNNI" in plain_ops.vnni_int8_status()
