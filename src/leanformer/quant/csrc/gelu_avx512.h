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

// GELU(x) = x Phi(x) = max(x, 0) - g(|x|), g(a) = a Phi(-a) = a (1 - erf(a / sqrt 2)) / 2, and g = 0 from kGeluSat on
// (g(5.6) = 6e-8). [0, kGeluSat) is cut into 16 intervals of width w = 1 / kGeluInvWidth centred on j w; on interval
// j, g = p_j(u), u = |x| / w - j in [-1/2, 1/2], p_j of degree 4 (no constant term for j = 0: GELU(0) = 0). The
// coefficients come from tools/fit_gelu_piecewise.py, minimax fits of g (2.9e-7); kGeluCoef[k] holds coefficient k
// of the 16 intervals, so one permute by j fetches it for the 16 lanes. In float32 the result is within 3.3e-7 of
// the float64 GELU (F.gelu: 1.3e-6) and within 1.2e-6 of F.gelu, under fusion.GELU_ABS_BOUND = 2e-6 (both tested in
// test_quant_fusion.py).
// Why: a Zen 4 core runs one 512-bit FMA, multiply or compare per cycle, and the rational erf(x) this replaces
// needed 16 of them and a division (~18 cycles per vector); this needs 7, and 5 permutes and 4 other operations that
// mostly go to other pipes (~10 cycles). Why g rather than Phi or erf: one 16-entry table serves both signs, and
// g's error is the GELU error (no final multiply by x to amplify it).
// j and u come from one rounding: fma(|x|, 1 / w, 1.5 * 2^23) rounds |x| / w to the nearest integer j and holds it in
// its low mantissa bits, which is all the permutes read (j <= 15 below kGeluSat); u = fma(|x|, 1 / w, -j) is rounded
// once. Past kGeluSat (and for inf, NaN) j and u are garbage and the mask returns max(0, x) instead: x from kGeluSat
// on (from 5.35 on already, by rounding), +0 from -kGeluSat down, +inf -> +inf, -inf -> 0, NaN stays NaN (max_ps
// returns its second operand for a NaN).
inline constexpr float kGeluSat = 5.6f;
inline constexpr float kGeluInvWidth = 2.758928537e+00f;
alignas(64) inline constexpr float kGeluCoef[5][16] = {
    {0.000000000e+00f, 1.299432963e-01f, 1.698129028e-01f, 1.505310088e-01f,
     1.066382527e-01f, 6.337624043e-02f, 3.223893419e-02f, 1.417513657e-02f,
     5.415840540e-03f, 1.803570776e-03f, 5.245046923e-04f, 1.333643449e-04f,
     2.967240471e-05f, 5.779986168e-06f, 9.861186072e-07f, 1.473940614e-07f},  // u^0
    {1.812299043e-01f, 8.086600155e-02f, 4.307137802e-03f, -3.687712550e-02f,
     -4.662959650e-02f, -3.804772347e-02f, -2.417849563e-02f, -1.265283115e-02f,
     -5.585164763e-03f, -2.105688676e-03f, -6.830094499e-04f, -1.914860477e-04f,
     -4.654480290e-05f, -9.830488125e-06f, -1.806917112e-06f, -2.893862074e-07f},  // u^1
    {-5.241423100e-02f, -4.585494474e-02f, -2.971203253e-02f, -1.186366286e-02f,
     9.341315017e-04f, 6.514687091e-03f, 6.721891463e-03f, 4.652392585e-03f,
     2.508130157e-03f, 1.107187127e-03f, 4.096055927e-04f, 1.286307524e-04f,
     3.456032937e-05f, 7.986045603e-06f, 1.592917897e-06f, 2.749921464e-07f},  // u^2
    {1.280452580e-05f, 4.120935220e-03f, 6.086805835e-03f, 5.345826037e-03f,
     3.047933802e-03f, 8.114235825e-04f, -4.565648269e-04f, -7.758067222e-04f,
     -6.033279933e-04f, -3.368330945e-04f, -1.486958499e-04f, -5.393478932e-05f,
     -1.639241236e-05f, -4.223191809e-06f, -9.292003824e-07f, -1.755046526e-07f},  // u^3
    {1.125008916e-03f, 8.262642659e-04f, 1.337368012e-04f, -4.507211270e-04f,
     -6.262097741e-04f, -4.542220850e-04f, -1.831457630e-04f, 2.456387392e-06f,
     6.683455285e-05f, 5.974224041e-05f, 3.419849963e-05f, 1.488820544e-05f,
     5.219356808e-06f, 1.513772304e-06f, 3.688097934e-07f, 7.621239462e-08f},  // u^4
};

inline __m512 gelu_erf(__m512 x) {
  const __m512 a = _mm512_abs_ps(x);
  const __mmask16 inside = _mm512_cmp_ps_mask(a, _mm512_set1_ps(kGeluSat), _CMP_LT_OQ);
  const __m512 inv_width = _mm512_set1_ps(kGeluInvWidth);
  const __m512 round_bias = _mm512_set1_ps(12582912.f);  // 1.5 * 2^23
  const __m512 biased = _mm512_fmadd_ps(a, inv_width, round_bias);
  const __m512i j = _mm512_castps_si512(biased);
  const __m512 u = _mm512_fmadd_ps(a, inv_width, _mm512_sub_ps(round_bias, biased));
  __m512 g = _mm512_permutexvar_ps(j, _mm512_load_ps(kGeluCoef[4]));
  for (int k = 3; k >= 0; --k) g = _mm512_fmadd_ps(g, u, _mm512_permutexvar_ps(j, _mm512_load_ps(kGeluCoef[k])));
  const __m512 relu = _mm512_max_ps(_mm512_setzero_ps(), x);
  return _mm512_mask_sub_ps(relu, inside, relu, g);
}

#endif
