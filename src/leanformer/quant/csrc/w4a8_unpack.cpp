// W4A8: int4 group-quantized weights run on the int8 tiles of the W8A8 kernel (amx_int8.cpp), with int8
// per-token activations (loaded by leanformer.quant.native; the Python side is leanformer.quant.w4a8).
//
// Why: the int4 x bf16 kernel (amx_w4.cpp) runs at the bf16 tile rate, half the int8 one, so an int4 model
// was no faster than bf16. Here the codes are re-expressed on a per-channel int8 grid for the duration of
// one call: each call unpacks the weight into a temporary VNNI-ordered int8 copy (N*K bytes, in L2 for
// MiniLM's layers) and hands it to amx_int8_linear. Nothing but the 4-bit codes stays in memory.
//
// Arithmetic, per weight: w8 = saturate_int8(round_half_even(((q - z) * s) * inv)), each step rounded to
// float32 (no FMA): (q - z) * s is the dequantized weight exactly as QuantizedLinear.dequantized_weight(float32)
// computes it, inv = 127 / max_k |w| per output channel (computed by the caller), so the result equals
// w4a8.requantized_weight's, bit for bit (tested), and the product then equals W8A8's exact reference.
//
// Code layout (w4a8.py, pack_w4a8_codes): (N/16, K/64, 16, 32) uint8; byte i of tile (n, k), row r holds the
// nibbles of VNNI bytes 2i (low) and 2i + 1 (high) of the same tile row, VNNI byte 4j + t being
// w[16n + j, 64k + 4r + t] (amx.pack_amx_weight's order). zero / scale: (G, N) float32, inv: (N,) float32.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

#include "native_api.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace {
constexpr int64_t kCols = 16;       // columns per packed block (one B tile's width)
constexpr int64_t kDepth = 64;      // K per tile
constexpr int64_t kRowBytes = 32;   // code bytes per tile row (64 nibbles)

#if defined(__AVX512F__) && defined(__AVX512BW__)
// one 16-byte quarter of a tile row: 16 nibble values (4 columns x 4 K) -> 16 int8 weights
inline __m128i requantize_quarter(__m128i nibbles, __m512 z, __m512 s, __m512 inv) {
  const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(nibbles));
  const __m512 w = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(q, z), s), inv);
  return _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(w));  // MXCSR default: round half to even; saturate to int8
}

// 16 values of one group (columns n0..n0+15) -> the 4 lane layouts of a tile row's quarters (lane l: column 4p + l/4)
inline void spread(const float* v, __m512 out[4]) {
  const __m512 cols = _mm512_loadu_ps(v);
  for (int p = 0; p < 4; ++p) {
    const __m512i idx = _mm512_add_epi32(_mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                                            5, 4, 3, 2, 1, 0), 2),
                                         _mm512_set1_epi32(4 * p));
    out[p] = _mm512_permutexvar_ps(idx, cols);
  }
}

void unpack_tile(const uint8_t* codes, const float* zero, const float* scale, const float* inv, int64_t ld,
                 int64_t k0, int64_t group_size, int8_t* out) {
  __m512 vi[4], vz[4], vs[4];
  spread(inv, vi);
  int64_t group = -1;
  for (int64_t r = 0; r < kCols; ++r) {
    const int64_t g = (k0 + 4 * r) / group_size;
    if (g != group) {  // a tile spans one group of 64+ or two groups of 32
      group = g;
      spread(zero + g * ld, vz);
      spread(scale + g * ld, vs);
    }
    const __m512i x = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + r * kRowBytes)));
    // 16-bit lane i = byte i of the codes -> bytes 2i, 2i + 1 = its low and high nibble
    const __m512i v = _mm512_or_si512(_mm512_and_si512(x, _mm512_set1_epi16(0x000F)),
                                      _mm512_and_si512(_mm512_slli_epi16(x, 4), _mm512_set1_epi16(0x0F00)));
    int8_t* dst = out + r * kDepth;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), requantize_quarter(_mm512_extracti32x4_epi32(v, 0), vz[0], vs[0], vi[0]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), requantize_quarter(_mm512_extracti32x4_epi32(v, 1), vz[1], vs[1], vi[1]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 32), requantize_quarter(_mm512_extracti32x4_epi32(v, 2), vz[2], vs[2], vi[2]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 48), requantize_quarter(_mm512_extracti32x4_epi32(v, 3), vz[3], vs[3], vi[3]));
  }
}
#else
// the same arithmetic one value at a time (CPUs without AVX512-BW never run the AMX kernel, but keep the op)
void unpack_tile(const uint8_t* codes, const float* zero, const float* scale, const float* inv, int64_t ld,
                 int64_t k0, int64_t group_size, int8_t* out) {
  for (int64_t r = 0; r < kCols; ++r) {
    const int64_t g = (k0 + 4 * r) / group_size;
    for (int64_t b = 0; b < kDepth; ++b) {
      const uint8_t byte = codes[r * kRowBytes + b / 2];
      const float q = static_cast<float>(b % 2 ? byte >> 4 : byte & 0xF);
      const int64_t j = b / 4;  // VNNI byte 4j + t is column j
      const float w = ((q - zero[g * ld + j]) * scale[g * ld + j]) * inv[j];
      const float rounded = std::nearbyint(w);
      out[r * kDepth + b] = static_cast<int8_t>(rounded > 127.f ? 127.f : (rounded < -128.f ? -128.f : rounded));
    }
  }
}
#endif
}  // namespace

// codes (N/16, K/64, 16, 32) uint8, zero / scale (G, N) float32, inv (N,) float32, group_size ->
//   (N/16, K/64, 16, 64) int8 in amx.pack_amx_weight's layout
torch::Tensor unpack_w4a8(const torch::Tensor& codes, const torch::Tensor& zero, const torch::Tensor& scale,
                          const torch::Tensor& inv, int64_t group_size) {
  TORCH_CHECK(codes.device().is_cpu() && codes.scalar_type() == torch::kUInt8 && codes.dim() == 4 &&
                  codes.is_contiguous() && codes.size(2) == kCols && codes.size(3) == kRowBytes,
              "codes: contiguous (N/16, K/64, 16, 32) uint8 on CPU");
  const int64_t col_blocks = codes.size(0), k_tiles = codes.size(1);
  const int64_t cols = col_blocks * kCols, depth = k_tiles * kDepth;
  TORCH_CHECK(group_size > 0 && group_size % 4 == 0 && depth % group_size == 0,
              "group_size: a multiple of 4 dividing K");
  const int64_t groups = depth / group_size;
  for (const auto* t : {&zero, &scale})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 2 && t->size(0) == groups && t->size(1) == cols &&
                    t->is_contiguous(), "zero / scale: (G, N) float32");
  TORCH_CHECK(inv.scalar_type() == torch::kFloat32 && inv.numel() == cols && inv.is_contiguous(), "inv: (N,) float32");
  auto out = torch::empty({col_blocks, k_tiles, kCols, kDepth}, codes.options().dtype(torch::kInt8));
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* zp = zero.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float* ip = inv.data_ptr<float>();
  int8_t* op = out.data_ptr<int8_t>();
  at::parallel_for(0, col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n0 = nb * kCols;
      for (int64_t kt = 0; kt < k_tiles; ++kt) {
        const int64_t tile = nb * k_tiles + kt;
        unpack_tile(cp + tile * kCols * kRowBytes, zp + n0, sp + n0, ip + n0, cols, kt * kDepth, group_size,
                    op + tile * kCols * kDepth);
      }
    }
  });
  return out;
}

// xq (M, K) int8, row_scale (M, 1), the int4 operands of unpack_w4a8, col_scale (N,) the int8 grid's channel
// scales (max |w| / 127), bias, activation, quantize -> amx_int8_linear's outputs on the unpacked weight
std::vector<torch::Tensor> amx_w4a8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                           const torch::Tensor& codes, const torch::Tensor& zero,
                                           const torch::Tensor& scale, const torch::Tensor& inv, int64_t group_size,
                                           const torch::Tensor& col_scale, const torch::Tensor& bias,
                                           int64_t activation, bool quantize) {
  return amx_int8_linear(xq, row_scale, unpack_w4a8(codes, zero, scale, inv, group_size), col_scale, bias, activation,
                         quantize);
}

// the same on the AVX512-VNNI kernel (vnni_int8.cpp), for CPUs without AMX
std::vector<torch::Tensor> vnni_w4a8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                            const torch::Tensor& codes, const torch::Tensor& zero,
                                            const torch::Tensor& scale, const torch::Tensor& inv, int64_t group_size,
                                            const torch::Tensor& col_scale, const torch::Tensor& bias,
                                            int64_t activation, bool quantize) {
  return vnni_int8_linear(xq, row_scale, unpack_w4a8(codes, zero, scale, inv, group_size), col_scale, bias, activation,
                          quantize);
}
