// The exact (erf) GELU on 16 floats, shared by the AMX kernels' epilogues (amx_int8.cpp, amx_w4.cpp), and the exp
// of the short-sequence attention kernel.
#pragma once
#if defined(__AVX512F__)
#include <immintrin.h>

// exp(u) for u <= 0: u = n ln2 + r with |r| <= ln2 / 2, a degree-6 Taylor polynomial in r (relative error
// ~2e-8 there), scaled by 2^n; below -87 the result flushes to 0 (the caller, short_attention.cpp's softmax, sets
// weights below e^-60 to 0 anyway).
inline __m512 exp_nonpositive(__m512 u) {
  u = _mm512_max_ps(u, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(u, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), u);  // ln2 in two parts: exact n * ln2_hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// GELU(x) = x / 2 + |x| / 2 * erf(|x| / sqrt 2), with erf(a / sqrt 2) = a * P(a^2) / Q(a^2) for a < kGeluSat and 1
// beyond (1 - erf(5.6 / sqrt 2) = 2.1e-8). P and Q (degree 5) come from tools/fit_gelu_rational.py, a minimax fit
// of the GELU error (2.8e-8); in float32 the result is within 1.2e-6 of the float64 GELU, as close as torch's own
// F.gelu (1.16e-6), and within fusion.GELU_ABS_BOUND = 2e-6 of F.gelu (both tested in test_quant_fusion.py).
// Why not erf from exp (Abramowitz & Stegun 7.1.26, as F.gelu): ~21 vector operations here against ~32, and the
// epilogue of the FFN-in kernel is dominated by this function. GELU(x) = x exactly past kGeluSat, 0 below -kGeluSat;
// NaN stays NaN (min_ps returns its second operand for a NaN first one, and x / 2 carries the NaN).
inline constexpr float kGeluSat = 5.6f;
inline constexpr float kGeluP[] = {7.978838020e-01f, 7.169664388e-02f, 9.610976243e-03f,
                                   3.803322385e-04f, 1.318117044e-05f, 4.341874297e-08f};
inline constexpr float kGeluQ[] = {1.000000000e+00f, 2.565211616e-01f, 2.980460625e-02f,
                                   2.003418089e-03f, 8.101404436e-05f, 1.185117819e-06f};

inline __m512 gelu_erf(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 sat = _mm512_set1_ps(kGeluSat);
  const __mmask16 saturated = _mm512_cmp_ps_mask(ax, sat, _CMP_GE_OQ);
  const __m512 a = _mm512_min_ps(ax, sat);
  const __m512 s = _mm512_mul_ps(a, a);
  // the two Horner chains are independent: they overlap in the pipeline
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kGeluP[5]), s, _mm512_set1_ps(kGeluP[4]));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kGeluQ[5]), s, _mm512_set1_ps(kGeluQ[4]));
  for (int i = 3; i >= 0; --i) {
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(kGeluP[i]));
    q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(kGeluQ[i]));
  }
  const __m512 erf_abs = _mm512_mask_mov_ps(_mm512_div_ps(_mm512_mul_ps(a, p), q), saturated, _mm512_set1_ps(1.f));
  const __m512 half = _mm512_set1_ps(0.5f);
  return _mm512_fmadd_ps(_mm512_mul_ps(ax, half), erf_abs, _mm512_mul_ps(x, half));
}

#endif
