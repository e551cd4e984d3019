// Per-row symmetric int8 quantization of float32 rows, shared by quantize_rows (quant_cpu.cpp) and the AMX
// kernel's fused output quantization (amx_int8.cpp), so both give the same codes bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// One row of quantize_rows: absmax = max |x| and whether every element is finite, then codes =
// round_half_even(x * inv). On AVX512 CPUs the two sweeps are written out with intrinsics (GCC vectorises the plain
// loops with one 8-wide accumulator that it spills to the stack every iteration, seen in objdump); max and the RNE
// conversion are exact, so both versions give the same bits.
#if defined(__AVX512F__)
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// max |x| as a float's bit pattern, by an unsigned integer max over the bit patterns of |x|: for non-negative floats
// the patterns order as the values do, and an inf or NaN pattern (exponent all ones, >= 0x7F800000) is above every
// finite one, so the one maximum gives both the exact max |x| of a finite row and whether the row is finite. Two
// operations per 16 floats (mask, max), against four for a float max plus a NaN probe (sum of x * 0).
inline uint32_t row_absmax_bits(const float* row, int64_t cols) {
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  __m512i m0 = _mm512_setzero_si512(), m1 = m0;
  int64_t k = 0;
  for (; k + 32 <= cols; k += 32) {
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(row + k), magnitude));
    m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(row + k + 16), magnitude));
  }
  for (; k < cols; k += 16)  // masked-off lanes read as 0
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_maskz_loadu_epi32(tail_mask(cols - k), row + k), magnitude));
  return _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
}

// 16 codes at a time, and 64 at a time through two saturating packs (int32 -> int16 -> int8, per 128-bit lane)
// and one permute that puts the four registers' 4-byte groups back in order: 13 operations per 64 codes against 20
// for four VPMOVSDB (two uops each on Zen 4). |code| <= 127, so neither saturation changes a value.
inline void row_codes(const float* row, int64_t cols, float inv, int8_t* out) {
  const __m512 s = _mm512_set1_ps(inv);
  // packs leave lane L holding [q0 | q1 | q2 | q3] groups L; output group o = 4 * register + lane comes from 4 * lane
  // + register
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  int64_t k = 0;
  for (; k + 64 <= cols; k += 64) {  // cvtps_epi32 rounds with MXCSR's default mode: to nearest, ties to even
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), s));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k + 16), s));
    const __m512i q2 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k + 32), s));
    const __m512i q3 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k + 48), s));
    const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3));
    _mm512_storeu_si512(out + k, _mm512_permutexvar_epi32(order, bytes));
  }
  for (; k + 16 <= cols; k += 16) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), s));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtsepi32_epi8(q));  // |q| <= 127: no saturation
  }
  if (k < cols) {
    const __mmask16 mask = tail_mask(cols - k);
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + k), s));
    _mm512_mask_cvtsepi32_storeu_epi8(out + k, mask, q);
  }
}

// max |x| of a finite row in `absmax`; false when the row holds a NaN or an inf
inline bool row_absmax(const float* row, int64_t cols, float& absmax) {
  const uint32_t bits = row_absmax_bits(row, cols);
  std::memcpy(&absmax, &bits, sizeof absmax);
  return bits < 0x7F800000u;
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

// max |x| of a finite row in `absmax`; false when the row holds a NaN or an inf (the probe, sum(x * 0), is NaN
// iff it does)
inline bool row_absmax(const float* row, int64_t cols, float& absmax) {
  float probe;
  row_absmax_probe(row, cols, absmax, probe);
  return probe == 0.f;
}
#endif

// One row: codes and scale = max(|x|, 1e-8) / 127, the eager quantize_per_token's arithmetic; false (and nothing
// written) when the row holds a NaN or an inf, so that callers can fall back to the eager path's behaviour.
inline bool quantize_row(const float* row, int64_t cols, int8_t* codes, float* scale) {
  float absmax;
  if (!row_absmax(row, cols, absmax)) return false;
  absmax = absmax > 1e-8f ? absmax : 1e-8f;
  // the eager code writes 127.0 / absmax, which torch evaluates as reciprocal(absmax) * 127 (two roundings)
  const float inv = (1.f / absmax) * 127.f;
  row_codes(row, cols, inv, codes);
  *scale = absmax / 127.f;
  return true;
}
