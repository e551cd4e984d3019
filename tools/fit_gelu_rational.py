"""Derives the coefficients of the AMX kernels' GELU (``src/leanformer/quant/csrc/gelu_avx512.h``).

erf(x / sqrt 2) = x * P(x^2) / Q(x^2) on |x| <= X_SAT, with P and Q of degree 5 and Q(0) = 1, fitted to
minimise the largest error of GELU(x) = x / 2 * (1 + erf(x / sqrt 2)) itself: Lawson's iteratively
reweighted least squares on the linearised problem P - f Q = 0, which converges towards the minimax
(equi-oscillating) fit. Past X_SAT, erf is +-1 to float32 precision (1 - erf(5.6 / sqrt 2) = 2.1e-8).

Prints the C++ arrays and the fit's error, and the error of a float32 evaluation with fused multiply-adds
(emulated in float64), against the float64 GELU: the kernels' test bounds (test_quant_fusion.py) are checked
on the real kernel, this only helps choose the degrees.

    python tools/fit_gelu_rational.py [--degrees 5 5] [--x-sat 5.6]
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.special import erf


def fit(dp: int, dq: int, x_sat: float, iters: int = 100):
    """(max GELU error of the fit, P coefficients, Q coefficients), both in powers of x^2, lowest first."""
    x = np.linspace(1e-6, x_sat, 8000)
    s = x * x
    f = erf(x / np.sqrt(2)) / x  # the even function P/Q approximates
    gelu_weight = 0.5 * x * x  # d GELU / d f: GELU = x/2 + (x/2) * x * f
    vp = np.vander(s, dp + 1, increasing=True)
    vq = np.vander(s, dq + 1, increasing=True)[:, 1:]
    lawson = np.full_like(x, 1.0 / x.size)
    q_prev = np.ones_like(x)
    best = None
    for _ in range(iters):
        w = gelu_weight * np.sqrt(lawson) / q_prev  # divide by the last Q: the linearised residual -> P/Q - f
        coef, *_ = np.linalg.lstsq(np.hstack([vp, -f[:, None] * vq]) * w[:, None], f * w, rcond=None)
        p, q = coef[:dp + 1], np.concatenate([[1.0], coef[dp + 1:]])
        q_prev = vq @ q[1:] + 1.0
        err = gelu_weight * (f - (vp @ p) / q_prev)
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, p, q)
        lawson = lawson * np.abs(err)
        lawson /= lawson.sum()
    return best


def _f32(v):
    return np.asarray(v, dtype=np.float64).astype(np.float32).astype(np.float64)


def gelu_float32(x, p, q, x_sat: float):
    """The kernel's formula step by step, each operation rounded to float32 (a multiply-add rounded once)."""
    ax = np.abs(_f32(x))
    xa = np.minimum(ax, _f32(x_sat))
    s = _f32(xa * xa)
    num, den = _f32(p[-1]), _f32(q[-1])
    for c in _f32(p)[-2::-1]:
        num = _f32(num * s + c)
    for c in _f32(q)[-2::-1]:
        den = _f32(den * s + c)
    t = np.where(ax >= x_sat, 1.0, _f32(_f32(xa * num) / den))
    return _f32(_f32(0.5 * ax) * t + _f32(0.5 * _f32(x)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degrees", type=int, nargs=2, default=(5, 5), metavar=("P", "Q"))
    ap.add_argument("--x-sat", type=float, default=5.6)
    args = ap.parse_args()
    worst, p, q = fit(*args.degrees, args.x_sat)
    x = np.concatenate([np.linspace(-12, 12, 2_400_001), np.random.default_rng(0).standard_normal(400_000) * 3])
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    err = np.abs(gelu_float32(x, p, q, args.x_sat) - exact)
    print(f"degrees {tuple(args.degrees)}, x_sat {args.x_sat}: fit error {worst:.2e}, float32 evaluation "
          f"{err.max():.2e} at x = {x[err.argmax()]:.4f}")
    fmt = lambda v: ", ".join(f"{c:.9e}f" for c in v)  # noqa: E731
    print(f"constexpr float kGeluP[] = {{{fmt(p)}}};")
    print(f"constexpr float kGeluQ[] = {{{fmt(q)}}};")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
