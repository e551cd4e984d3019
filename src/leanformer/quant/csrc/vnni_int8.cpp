// W8A8's int8 x int8 product on AVX512-VNNI (VPDPBUSD), for x86 CPUs without AMX tiles (AMD Zen 4 and later,
// Intel Ice Lake / Cascade Lake). Same operands, outputs and arithmetic as amx_int8.cpp, so the Python side
// (leanformer.quant.amx) hands either kernel the same packed weight and gets bit-identical results.
//
// Why our own kernel: on the Zen 4 VM this was written on, torch 2.13's oneDNN picks its reference int8 matmul
// for the packed weight (ONEDNN_VERBOSE: "ref_int8"; ~1000x slower than fp32), and torch._int_mm runs at about
// fp32's speed. VPDPBUSD does 64 int8 products per instruction, 4x the float32 FMA rate.
//
// VPDPBUSD multiplies unsigned bytes by signed ones. The packed weight stays signed (amx.pack_amx_weight's
// layout, whose 64-byte rows are exactly one register of 16 columns x 4 K values); the activations are made
// unsigned by flipping their sign bit, a + 128, and the sums corrected with 128 * sum_k w[n, k] per column,
// computed per call from the packed weight (one pass over it: 1/M of the product's instructions):
//   sum_k (a + 128) w = sum_k a w + 128 sum_k w, in int32 without wrap-around for K < 2^16 (|sum| < 255*128*K).
// VPDPBUSD (not the saturating VPDPBUSDS) adds its four products to the int32 lane exactly, so acc is the exact
// int32 sum and out = ((float(acc) * row_scale) * col_scale) + bias, each step rounded to float32 as in the AMX
// kernel and in torch._int_mm + rescale_int32 (quant_cpu.cpp).
//
// Blocking: each task takes 8-row blocks of A (converted to unsigned once, 8 x K bytes in L1) against
// 32-column groups of B (2 registers per K step, streamed from L2: MiniLM's largest weight is 576 KB), 16
// accumulators per block. Measured in a scratch loop on Zen 4 (576x384 @ 384x1536): 8x2 blocks ran at ~215
// GMAC/s, about one VPDPBUSD per cycle, once the products were written as in-place asm (dot_accumulate); 12x2
// blocks (24 accumulators) were no faster (171-192 against 184-204 GMAC/s for 8x2). Fetching each column group
// once per 64-row panel instead (B reused from L1) was no faster inside MiniLM (0.95x the speed, 20 interleaved
// forwards), so the simpler order stays.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "int8_linear_operands.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gelu_avx512.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LEANFORMER_HAVE_VNNI 1
#include <immintrin.h>
#endif

namespace {
constexpr int64_t kCols = 16;   // columns per packed block (one register of int32 lanes)
constexpr int64_t kDepth = 64;  // K per packed tile (amx.pack_amx_weight)
constexpr int64_t kMr = 8;      // rows per block
constexpr int kNv = 2;          // 16-column blocks per group

#ifdef LEANFORMER_HAVE_VNNI
// 128 * sum_k w[n, k] for the 16 columns of one packed block (K / 4 registers of 16 columns x 4 K values)
__m512i column_correction(const int8_t* panel, int64_t steps) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t s = 0; s < steps; ++s) sum = _mm512_dpbusd_epi32(sum, ones, _mm512_loadu_si512(panel + s * 64));
  return _mm512_slli_epi32(sum, 7);
}

// acc += the four-byte dot products of u (unsigned) and w (signed) per int32 lane: VPDPBUSD in place. Written as
// inline asm because GCC 12 compiles _mm512_dpbusd_epi32 on an accumulator array into register-to-register copies
// of the accumulators (and stack spills) on every K step, about 60 instructions per 16 products; with the asm the
// loop is the 16 products, 8 broadcasts and 2 loads. In a scratch loop on Zen 4 this ran MiniLM's three product
// shapes at 1.05-2.0x the speed in two runs (same int32 sums; noisy VM).
inline void dot_accumulate(__m512i& acc, __m512i u, __m512i w) {
#if defined(__GNUC__)
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(w));
#else
  acc = _mm512_dpbusd_epi32(acc, u, w);
#endif
}

// The sums of kMr rows of unsigned A (`au`, rows `depth` bytes apart) with nv packed 16-column blocks, corrected,
// rescaled, activated and stored for the first `valid` rows. Not inlined: inside vnni_int8_linear's parallel
// lambda GCC kept the accumulators on the stack (a load and a store around every product; 0.5x the speed).
template <int nv>
__attribute__((noinline)) void block(const uint8_t* au, int64_t depth, const int8_t* const* panels,
                                     const __m512i* correction, int64_t valid, const float* rs, const float* cs,
                                     const float* bias, int64_t act, float* out, int64_t ldo) {
  // one named array per column block, indexed only by unrolled loops, so that all 8 * nv stay in registers
  __m512i acc0[kMr], acc1[kMr];
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i) acc0[i] = acc1[i] = _mm512_setzero_si512();
  const int8_t* w0 = panels[0];
  const int8_t* w1 = nv == 2 ? panels[1] : panels[0];
  const int64_t steps = depth / 4;
  for (int64_t s = 0; s < steps; ++s) {
    const __m512i b0 = _mm512_loadu_si512(w0 + s * 64);
    const __m512i b1 = _mm512_loadu_si512(w1 + s * 64);
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i) {
      int32_t four;
      std::memcpy(&four, au + i * depth + 4 * s, 4);
      const __m512i a = _mm512_set1_epi32(four);
      dot_accumulate(acc0[i], a, b0);
      if constexpr (nv == 2) dot_accumulate(acc1[i], a, b1);
    }
  }
  // to memory with constant indices, so that the accumulators stay in registers through the loop above (indexing
  // them by the runtime row count below made GCC keep them on the stack, storing each one every K step)
  alignas(64) int32_t sums[kMr * nv * kCols];
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i) {
    _mm512_store_si512(sums + i * nv * kCols, _mm512_sub_epi32(acc0[i], correction[0]));
    if constexpr (nv == 2) _mm512_store_si512(sums + (i * nv + 1) * kCols, _mm512_sub_epi32(acc1[i], correction[1]));
  }
  for (int64_t i = 0; i < valid; ++i) {
    const __m512 row = _mm512_set1_ps(rs[i]);
    for (int j = 0; j < nv; ++j) {
      __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(sums + (i * nv + j) * kCols));  // exact RNE, like a cast
      v = _mm512_mul_ps(_mm512_mul_ps(v, row), _mm512_loadu_ps(cs + j * kCols));
      if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j * kCols));
      if (act == 1) v = gelu_erf(v);
      _mm512_storeu_ps(out + i * ldo + j * kCols, v);
    }
  }
}
#endif
}  // namespace

bool vnni_int8_ready() {
#ifdef LEANFORMER_HAVE_VNNI
  return true;
#else
  return false;
#endif
}

std::string vnni_int8_status() {
#ifdef LEANFORMER_HAVE_VNNI
  return "on";
#else
  return "off: built without AVX512-VNNI (this CPU or compiler has none)";
#endif
}

#ifdef LEANFORMER_HAVE_VNNI
namespace {
// The product of io's operands into io.out, each task's finished rows handed to io.finish_rows; false if one of
// them held a NaN or an inf
bool vnni_product(const Int8Linear& io, int64_t activation) {
  const int64_t rows = io.rows, depth = io.depth, cols = io.cols;
  const int64_t col_blocks = cols / kCols;
  std::atomic<bool> finite{true};
  const int8_t *ap = io.a, *bp = io.b;
  const float *rp = io.row_scale, *cp = io.col_scale, *biasp = io.bias;
  const int64_t panel = depth * kCols, steps = depth / 4;
  std::vector<__m512i> correction(col_blocks);
  at::parallel_for(0, col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) correction[nb] = column_correction(bp + nb * panel, steps);
  });
  const int64_t row_blocks = (rows + kMr - 1) / kMr, groups = (col_blocks + kNv - 1) / kNv;
  // Tasks hold whole row blocks (A stays in L1 across its column groups, and quantizing or normalising needs whole
  // rows), except for small batches without either, split by column group so that both cores get work.
  const bool finish = io.finishes_rows();
  const bool whole_rows = finish || row_blocks >= 2 * at::get_num_threads();
  const int64_t units = whole_rows ? row_blocks : row_blocks * groups;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> au(kMr * depth);
    std::vector<float> scratch(io.codes_only ? kMr * cols : 0);  // one row block's floats (codes_only)
    int64_t converted = -1;  // the row block held in `au`
    const int64_t first = whole_rows ? begin * groups : begin, last = whole_rows ? end * groups : end;
    for (int64_t u = first; u < last; ++u) {
      const int64_t rb = u / groups, g = u % groups, m0 = rb * kMr;
      const int64_t valid = std::min(kMr, rows - m0);
      if (rb != converted) {  // a + 128 (the sign bit flipped); rows past the end read as a = 0, never stored
        const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
        for (int64_t i = 0; i < kMr * depth; i += 64) {  // depth % 64 == 0
          const __m512i a = i < valid * depth ? _mm512_loadu_si512(ap + m0 * depth + i) : _mm512_setzero_si512();
          _mm512_storeu_si512(au.data() + i, _mm512_xor_si512(a, sign));
        }
        converted = rb;
      }
      const int64_t n0 = g * kNv * kCols, nv = std::min<int64_t>(kNv, col_blocks - g * kNv);
      const int8_t* panels[kNv];
      for (int j = 0; j < nv; ++j) panels[j] = bp + (g * kNv + j) * panel;
      const __m512i* corr = correction.data() + g * kNv;
      const float* bias_g = biasp ? biasp + n0 : nullptr;
      float* rows_out = io.row_block(m0, scratch.data());
      float* out_g = rows_out + n0;
      if (nv == 2) block<2>(au.data(), depth, panels, corr, valid, rp + m0, cp + n0, bias_g, activation, out_g, cols);
      else block<1>(au.data(), depth, panels, corr, valid, rp + m0, cp + n0, bias_g, activation, out_g, cols);
      if (finish && g == groups - 1 && !io.finish_rows(m0, valid, rows_out)) finite = false;  // the block is done
    }
  });
  return finite.load();
}
}  // namespace
#endif

namespace {
// io's product on the VNNI kernel, as the ops return it; `op` names the op in the error of a build without VNNI
std::vector<torch::Tensor> run_vnni(const Int8Linear& io, int64_t activation, const char* op) {
  TORCH_CHECK(io.depth < (1 << 16), "K must be below 65536 (int32 sums of the unsigned-shifted activations)");
#ifdef LEANFORMER_HAVE_VNNI
  return io.outputs(vnni_product(io, activation));
#else
  TORCH_CHECK(false, op, ": ", vnni_int8_status());
  return {};
#endif
}
}  // namespace

// The same operands and outputs as amx_int8_linear (amx_int8.cpp): xq (M, K) int8, row_scale (M, 1), packed
// (N/16, K/64, 16, 64) int8, col_scale (N,), bias (N,) or empty, activation (0 none, 1 GELU), quantize ->
// {out (M, N) float32, codes (M, N) int8, scale (M, 1), finite} (the last three empty / true without `quantize`)
std::vector<torch::Tensor> vnni_int8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                            const torch::Tensor& packed, const torch::Tensor& col_scale,
                                            const torch::Tensor& bias, int64_t activation, bool quantize) {
  return run_vnni(check_int8_linear(xq, row_scale, packed, col_scale, bias, activation, quantize), activation,
                  "vnni_int8_linear");
}

// vnni_int8_linear with `quantize` for a caller that wants only the codes: {out (0, N), codes (M, N) int8, scale
// (M, 1), finite}, the codes and scales equal bit for bit to vnni_int8_linear's. Each task keeps its row block's
// floats in a scratch block instead of writing them out.
std::vector<torch::Tensor> vnni_int8_linear_codes(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                  const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                  const torch::Tensor& bias, int64_t activation) {
  return run_vnni(check_int8_linear(xq, row_scale, packed, col_scale, bias, activation, true, true), activation,
                  "vnni_int8_linear_codes");
}

// vnni_int8_linear without activation, then LayerNorm(out + residual) with weight, bias and eps on each finished
// row while it is in cache, and that row's codes: {out, codes (M, N) int8, scale (M, 1), finite}, equal bit for bit
// to residual_layer_norm(vnni_int8_linear(...)[0], residual, weight, bias, eps, true)
std::vector<torch::Tensor> vnni_int8_linear_norm(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                 const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                 const torch::Tensor& bias, const torch::Tensor& residual,
                                                 const torch::Tensor& weight, const torch::Tensor& norm_bias,
                                                 double eps) {
  Int8Linear io = check_int8_linear(xq, row_scale, packed, col_scale, bias, 0, true);
  attach_residual_norm(io, residual, weight, norm_bias, eps);
  return run_vnni(io, 0, "vnni_int8_linear_norm");
}
