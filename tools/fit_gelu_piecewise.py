"""Derives the coefficients of the int8 kernels' piecewise-polynomial GELU (``src/leanformer/quant/csrc/gelu_avx512.h``).

GELU(x) = x Phi(x) = max(x, 0) - g(|x|) with g(a) = a Phi(-a) = a (1 - erf(a / sqrt 2)) / 2: one table serves
both signs, g is small (<= 0.17, so float32 rounding inside it is ~1e-8) and its error is the GELU error itself
(no final multiply). [0, X_SAT) is split into TABLE intervals of width w centred on j w (interval 0 is
[0, w / 2)); the last one ends a little past X_SAT, so that |x| / w rounds to at most TABLE - 1 below X_SAT (the
kernel returns max(x, 0) from X_SAT on: g(5.6) = 6e-8). On interval j, g(a) = p_j(u) with u = a / w - j in
[-1/2, 1/2] (in [0, 1/2] for j = 0, where p_0 has no constant term, so that GELU(0) = 0), p_j of degree DEGREE.
Each p_j is the minimax fit of g on its interval (Lawson's iteratively reweighted least squares on Chebyshev-
spaced points, which converges towards the equi-oscillating fit), taken slightly past the interval ends since
float32 rounding of u can land a hair outside. The coefficients are then rounded to float32 highest first,
refitting the lower ones after each rounding, so that the rounding of the top ones is absorbed by the others.

Prints the C++ tables (coefficient k of all TABLE intervals in one array: one permute fetches it for 16 lanes)
and the fit's error, and the error of a float32 evaluation (as the kernel does it, emulated in float64) against
the float64 GELU, on float32 inputs: the kernels' test bounds are checked on the real kernel, this only helps
choose TABLE and DEGREE.

    python tools/fit_gelu_piecewise.py [--table 16] [--degree 4] [--x-sat 5.6]
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.special import erf


def g_exact(a):
    """a Phi(-a), the part of GELU that the polynomials approximate."""
    return 0.5 * a * (1.0 - erf(a / np.sqrt(2.0)))


def _f32(v):
    return np.asarray(v, dtype=np.float64).astype(np.float32).astype(np.float64)


def lawson(u, f, basis, iters: int = 300):
    """Coefficients minimising max |basis @ c - f| over the points u (Lawson IRLS), and that max."""
    weight = np.full(u.size, 1.0 / u.size)
    best = None
    for _ in range(iters):
        sw = np.sqrt(weight)
        c, *_ = np.linalg.lstsq(basis * sw[:, None], f * sw, rcond=None)
        err = basis @ c - f
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, c)
        weight = weight * np.abs(err)
        weight /= weight.sum()
    return best


def fit_interval(j: int, w: float, degree: int, margin: float = 1e-3):
    """(max error, coefficients of p_j in powers of u, lowest first) after float32 rounding of the coefficients."""
    lo, hi = (0.0, 0.5 + margin) if j == 0 else (-0.5 - margin, 0.5 + margin)
    n = 3000
    u = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.linspace(np.pi, 0.0, n))  # Chebyshev-spaced, ends included
    f = g_exact((u + j) * w)
    first = 1 if j == 0 else 0  # p_0(0) = 0: no constant term
    powers = np.vander(u, degree + 1, increasing=True)
    fixed = np.zeros(degree + 1)
    # round the highest free coefficient to float32, refit the lower ones around it, repeat
    for top in range(degree, first - 1, -1):
        residual = f - powers[:, top + 1:] @ fixed[top + 1:]
        _, c = lawson(u, residual, powers[:, first:top + 1])
        fixed[top] = _f32(c[-1])
    err = np.abs(powers @ fixed - f).max()
    return err, fixed


def fit(table: int, degree: int, x_sat: float):
    """(max fit error, coefficients [interval, power], interval width w)."""
    # the last interval ends a little past X_SAT: |x| * (1 / w) < table - 1/2 below X_SAT; w is what the kernel's
    # float32 1 / w stands for
    w = 1.0 / _f32((table - 0.55) / x_sat)
    coef = np.zeros((table, degree + 1))
    worst = 0.0
    for j in range(table):
        err, coef[j] = fit_interval(j, w, degree)
        worst = max(worst, err)
    return worst, coef, w


def gelu_float32(x, coef, w: float, x_sat: float):
    """The kernel's formula step by step, each operation rounded to float32 (a multiply-add rounded once)."""
    x = _f32(x)
    a = np.abs(x)
    k = _f32(1.0 / w)
    inside = a < _f32(x_sat)
    ak = np.where(inside, a, 0.0) * k  # exact in float64 (24-bit times 24-bit)
    j = np.rint(ak)  # fma(a, 1 / w, 1.5 * 2^23) - 1.5 * 2^23: the exact product rounded to nearest even
    u = _f32(ak - j)  # fma(a, 1 / w, -j): one rounding
    idx = j.astype(np.int64)
    c = _f32(coef)
    g = c[idx, -1]
    for power in range(coef.shape[1] - 2, -1, -1):
        g = _f32(g * u + c[idx, power])
    relu = np.maximum(x, 0.0)
    return np.where(inside, _f32(relu - g), relu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=int, default=16, choices=(16, 32),
                    help="entries per coefficient table: 16 (_mm512_permutexvar_ps) or 32 (_mm512_permutex2var_ps)")
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--x-sat", type=float, default=5.6, help="GELU(x) = max(x, 0) for |x| >= X_SAT")
    args = ap.parse_args()
    worst, coef, w = fit(args.table, args.degree, args.x_sat)
    x = _f32(np.concatenate([np.linspace(-8, 8, 3_200_001), np.random.default_rng(0).standard_normal(400_000) * 3]))
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    err = np.abs(gelu_float32(x, coef, w, args.x_sat) - exact)
    print(f"table {args.table}, degree {args.degree}, w = {w:.6f} (1 / w = {_f32(1 / w):.9e}f), x_sat "
          f"{args.x_sat}: fit error {worst:.2e}, float32 evaluation {err.max():.2e} at x = {x[err.argmax()]:.4f}")
    print(f"inline constexpr float kGeluSat = {args.x_sat}f;")
    print(f"inline constexpr float kGeluInvWidth = {_f32(1 / w):.9e}f;")
    print(f"alignas(64) inline constexpr float kGeluCoef[{args.degree + 1}][{args.table}] = {{")
    for k in range(args.degree + 1):  # 4 intervals a line
        lines = [", ".join(f"{c:.9e}f" for c in _f32(coef[i:i + 4, k])) for i in range(0, args.table, 4)]
        print("    {" + ",\n     ".join(lines) + f"}},  // u^{k}")
    print("};")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
