// Per-row symmetric int8 quantization of float32 rows, shared by quantize_rows (quant_cpu.cpp) and the AMX
// kernel's fused output quantization (amx_int8.cpp), so both give the same codes bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// One row of quantize_rows: absmax = max |x|, probe = sum(x * 0) (NaN iff the row holds a NaN or an inf), then
// codes = round_half_even(x * inv). GCC vectorises the plain loops with one 8-wide accumulator that it spills to
// the stack every iteration (seen in objdump), so on AVX512 CPUs the two sweeps are written out with 2x16-wide
// accumulators; max, the probe and the RNE conversion are exact, so both versions give the same bits.
#if defined(__AVX512F__)
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

inline void row_absmax_probe(const float* row, int64_t cols, float& absmax, float& probe) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 m0 = zero, m1 = zero, p0 = zero, p1 = zero;
  int64_t k = 0;
  for (; k + 32 <= cols; k += 32) {
    const __m512 a = _mm512_loadu_ps(row + k), b = _mm512_loadu_ps(row + k + 16);
    m0 = _mm512_max_ps(m0, _mm512_abs_ps(a));
    m1 = _mm512_max_ps(m1, _mm512_abs_ps(b));
    p0 = _mm512_add_ps(p0, _mm512_mul_ps(a, zero));
    p1 = _mm512_add_ps(p1, _mm512_mul_ps(b, zero));
  }
  for (; k < cols; k += 16) {
    const __m512 a = _mm512_maskz_loadu_ps(tail_mask(cols - k), row + k);  // masked-off lanes read as 0
    m0 = _mm512_max_ps(m0, _mm512_abs_ps(a));
    p0 = _mm512_add_ps(p0, _mm512_mul_ps(a, zero));
  }
  absmax = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  probe = _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
}

inline void row_codes(const float* row, int64_t cols, float inv, int8_t* out) {
  const __m512 s = _mm512_set1_ps(inv);
  int64_t k = 0;
  for (; k + 16 <= cols; k += 16) {  // cvtps_epi32 rounds with MXCSR's default mode: to nearest, ties to even
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), s));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtsepi32_epi8(q));  // |q| <= 127: no saturation
  }
  if (k < cols) {
    const __mmask16 mask = tail_mask(cols - k);
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + k), s));
    _mm512_mask_cvtsepi32_storeu_epi8(out + k, mask, q);
  }
}
#else
inline void row_absmax_probe(const float* row, int64_t cols, float& absmax, float& probe) {
  float m = 0.f, p = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : p)
  for (int64_t k = 0; k < cols; ++k) {
    const float a = std::fabs(row[k]);
    m = a > m ? a : m;
    p += row[k] * 0.f;
  }
  absmax = m;
  probe = p;
}

inline void row_codes(const float* row, int64_t cols, float inv, int8_t* out) {
#pragma omp simd
  for (int64_t k = 0; k < cols; ++k) out[k] = static_cast<int8_t>(std::nearbyint(row[k] * inv));
}
#endif


// One row: codes and scale = max(|x|, 1e-8) / 127, the eager quantize_per_token's arithmetic; false (and nothing
// written) when the row holds a NaN or an inf, so that callers can fall back to the eager path's behaviour.
inline bool quantize_row(const float* row, int64_t cols, int8_t* codes, float* scale) {
  float absmax, probe;
  row_absmax_probe(row, cols, absmax, probe);
  if (!(probe == 0.f)) return false;
  absmax = absmax > 1e-8f ? absmax : 1e-8f;
  // the eager code writes 127.0 / absmax, which torch evaluates as reciprocal(absmax) * 127 (two roundings)
  const float inv = (1.f / absmax) * 127.f;
  row_codes(row, cols, inv, codes);
  *scale = absmax / 127.f;
  return true;
}
