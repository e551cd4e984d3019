// Weight-only int4 layers on Intel AMX tiles: bf16 activations x int4 weights unpacked to bf16 in cache, fp32
// accumulation, bias fused (loaded by leanformer.quant.native; the Python side is leanformer.quant.amx).
//
// The batch path it replaces unpacks the whole weight to bf16 in memory on every call (N*K*2 bytes written and
// read back), runs oneDNN's bf16 GEMM, which rounds its output to bf16, and adds the bias in a third pass.
// Here each panel of up to 512 output columns is unpacked once per call into a buffer that stays in L2, every
// 32-row block of the activations is multiplied against it (tile product TDPBF16PS), and each 32x32 block of
// float32 sums gets its bias in L1 and is written once.
//
// Arithmetic: the unpacked weight is exactly the reference's, w = bf16(bf16(q - z) * s) with z and s already
// bf16 (QuantizedLinear.dequantized_weight(torch.bfloat16)) - except weights below 2^-126 in magnitude, which
// the bf16 conversion instruction flushes to zero (scales that small do not occur); bf16 x bf16 products are exact in float32 and are
// summed in float32, so the result differs from float32 F.linear(x_bf16, w_bf16) only by the order of the
// float32 sum (bound tested in test_quant_amx_w4.py) - closer to it than the bf16-rounded output of the path
// it replaces.
//
// Code layout (amx.py, pack_amx_int4): (N/16, K/32, 16, 16) uint8; byte (n, k, r, j) holds q[16n + j, 32k + 2r]
// in its low nibble and q[16n + j, 32k + 2r + 1] in its high one, so one 16-byte row unpacks straight into a
// B tile row (16 columns x 2 consecutive K, the pair order TDPBF16PS reads). zero / scale: (G, N) float32
// holding bf16 values. Needs N % 16 == 0, K % 32 == 0 and a group size that is a multiple of 32.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "gelu_avx512.h"
#include "rescale_operands.h"

namespace {
using namespace amx;
constexpr int64_t kPairDepth = 32;                 // K consumed by one TDPBF16PS (16 rows of bf16 pairs)
// 16-column blocks unpacked together: 512 columns (393 KB of bf16 at K=384, in L2); 1.2-1.25x faster than
// 128-column panels on MiniLM's 384->1536 layer, the same elsewhere (576 rows, this VM)
constexpr int64_t kPanelBlocks = 32;
constexpr int64_t kCodeTile = kRows * kRows;       // code bytes per 16-column x 32-K tile
constexpr int64_t kWeightTile = kRows * kRows * 2;  // bf16 values per unpacked tile

#ifdef LEANFORMER_HAVE_AMX_BF16
// lane 2j + t of a tile row is column j: these spread a per-column vector of 16 (columns 0-7, then 8-15) over
// the two lanes of each column
inline __m512i spread_lo() { return _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0); }
inline __m512i spread_hi() { return _mm512_add_epi32(spread_lo(), _mm512_set1_epi32(8)); }

// One 16-byte tile row of codes -> its 32 nibbles as int32 in lane order: q0 holds columns 0-7 (lanes 2j, 2j + 1
// are column j's low and high nibble), q1 columns 8-15
inline void tile_row_nibbles(const uint8_t* row, __m512i& q0, __m512i& q1) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
  const __m512i lo = _mm512_and_si512(bytes, _mm512_set1_epi32(0xF)), hi = _mm512_srli_epi32(bytes, 4);
  q0 = _mm512_permutex2var_epi32(lo, _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0), hi);
  q1 = _mm512_permutex2var_epi32(lo, _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8),
                                 hi);
}

// One 16-column block of codes (K/32 tiles) -> bf16 B tiles, w = bf16(v * s) with v = decode(q) bf16-exact and s
// the column's scale; scale points at this block's 16 columns of group 0, `ld` floats apart per group.
// group_decoder(g) returns the decoder for scale group g: decode(q0, q1, d0, d1) turns the nibbles of
// tile_row_nibbles into their values, in the same lanes.
template <typename GroupDecoder>
inline void unpack_tiles(const uint8_t* codes, const float* scale, int64_t ld, int64_t k_tiles,
                         int64_t tiles_per_group, uint16_t* out, const GroupDecoder& group_decoder) {
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int64_t g = kt / tiles_per_group;
    const __m512 s = _mm512_loadu_ps(scale + g * ld);
    const __m512 s0 = _mm512_permutexvar_ps(spread_lo(), s), s1 = _mm512_permutexvar_ps(spread_hi(), s);
    const auto decode = group_decoder(g);
    const uint8_t* tile = codes + kt * kCodeTile;
    uint16_t* dst = out + kt * kWeightTile;
    for (int64_t r = 0; r < kRows; ++r) {
      __m512i q0, q1;
      __m512 d0, d1;
      tile_row_nibbles(tile + r * kRows, q0, q1);
      decode(q0, q1, d0, d1);
      // times s, rounded to bf16 by the final conversion (exact products: both factors are bf16 values)
      const __m512bh w = _mm512_cvtne2ps_pbh(_mm512_mul_ps(d1, s1), _mm512_mul_ps(d0, s0));
      _mm512_storeu_si512(dst + r * 2 * kRows, reinterpret_cast<const __m512i&>(w));
    }
  }
}

// Linear codes: v = bf16(q - z), z the column's bf16 zero point (`ld` floats apart per group, as the scale)
void unpack_block(const uint8_t* codes, const float* zero, const float* scale, int64_t ld, int64_t k_tiles,
                  int64_t tiles_per_group, uint16_t* out) {
  unpack_tiles(codes, scale, ld, k_tiles, tiles_per_group, out, [&](int64_t g) {
    const __m512 z = _mm512_loadu_ps(zero + g * ld);
    const __m512 z0 = _mm512_permutexvar_ps(spread_lo(), z), z1 = _mm512_permutexvar_ps(spread_hi(), z);
    return [z0, z1](__m512i q0, __m512i q1, __m512& d0, __m512& d1) {
      // bf16(q - z): round to bf16 and back
      const __m512bh d = _mm512_cvtne2ps_pbh(_mm512_sub_ps(_mm512_cvtepi32_ps(q1), z1),
                                             _mm512_sub_ps(_mm512_cvtepi32_ps(q0), z0));
      const __m512i di = reinterpret_cast<const __m512i&>(d);
      d0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(di)), 16));
      d1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(di, 1)), 16));
    };
  });
}

// Codebook codes (ANT and other non-uniform 4-bit types): v = table[id][q]. `table` holds `table_rows` rows of 16
// bf16-exact floats, `ids` (int32, `ld` apart per group) picks each column's row for each scale group.
// Up to kPermuteRows rows (ANT has one per numeric type: 3 by default) stay in registers and each row is one lane
// permute, masked to the columns that use it; larger tables take one gather per 16 values (measured on MiniLM's
// shapes, Sapphire Rapids: the gather made unpacking ~1.35x the linear codes' time at 10 rows).
constexpr int64_t kPermuteRows = 4;

void unpack_block_codebook(const uint8_t* codes, const float* table, int64_t table_rows, const int32_t* ids,
                           const float* scale, int64_t ld, int64_t k_tiles, int64_t tiles_per_group, uint16_t* out) {
  if (table_rows > kPermuteRows) {
    unpack_tiles(codes, scale, ld, k_tiles, tiles_per_group, out, [&](int64_t g) {
      const __m512i row = _mm512_slli_epi32(_mm512_loadu_si512(ids + g * ld), 4);  // table row * 16, per column
      const __m512i row0 = _mm512_permutexvar_epi32(spread_lo(), row);
      const __m512i row1 = _mm512_permutexvar_epi32(spread_hi(), row);
      return [row0, row1, table](__m512i q0, __m512i q1, __m512& d0, __m512& d1) {
        d0 = _mm512_i32gather_ps(_mm512_add_epi32(row0, q0), table, 4);
        d1 = _mm512_i32gather_ps(_mm512_add_epi32(row1, q1), table, 4);
      };
    });
    return;
  }
  __m512 rows[kPermuteRows];
  for (int64_t t = 0; t < kPermuteRows; ++t) rows[t] = _mm512_loadu_ps(table + 16 * std::min(t, table_rows - 1));
  unpack_tiles(codes, scale, ld, k_tiles, tiles_per_group, out, [&](int64_t g) {
    const __m512i id = _mm512_loadu_si512(ids + g * ld);
    const __m512i id0 = _mm512_permutexvar_epi32(spread_lo(), id), id1 = _mm512_permutexvar_epi32(spread_hi(), id);
    __mmask16 use0[kPermuteRows], use1[kPermuteRows];  // lanes whose column reads row t
    for (int64_t t = 0; t < kPermuteRows; ++t) {
      use0[t] = _mm512_cmpeq_epi32_mask(id0, _mm512_set1_epi32(static_cast<int>(t)));
      use1[t] = _mm512_cmpeq_epi32_mask(id1, _mm512_set1_epi32(static_cast<int>(t)));
    }
    return [&rows, use0, use1, table_rows](__m512i q0, __m512i q1, __m512& d0, __m512& d1) {
      d0 = _mm512_permutexvar_ps(q0, rows[0]);
      d1 = _mm512_permutexvar_ps(q1, rows[0]);
      for (int64_t t = 1; t < table_rows; ++t) {
        d0 = _mm512_mask_permutexvar_ps(d0, use0[t], q0, rows[t]);
        d1 = _mm512_mask_permutexvar_ps(d1, use1[t], q1, rows[t]);
      }
    };
  });
}
#else
// never called: w4_linear raises first in builds without AMX-BF16
void unpack_block(const uint8_t*, const float*, const float*, int64_t, int64_t, int64_t, uint16_t*) {}
void unpack_block_codebook(const uint8_t*, const float*, int64_t, const int32_t*, const float*, int64_t, int64_t,
                           int64_t, uint16_t*) {}
#endif
#ifdef LEANFORMER_HAVE_AMX_BF16

// float(bits) -> bf16 bits, round to nearest even, NaN -> the quiet NaN torch's conversion gives: the same bits as
// tensor.to(torch.bfloat16), denormals included
inline __m256i to_bf16_rne(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

// out = act(acc + bias) for `rows` rows and 16 * `halves` columns, and its bf16 copy when out_bf16 is given
void epilogue_store(const float* acc, int64_t rows, int halves, const float* bias, bool gelu, float* out,
                    uint16_t* out_bf16, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r)
    for (int h = 0; h < halves; ++h) {
      __m512 v = _mm512_loadu_ps(acc + r * kBlock + h * kRows);
      if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + h * kRows));
      if (gelu) v = gelu_erf(v);
      _mm512_storeu_ps(out + r * ldo + h * kRows, v);
      if (out_bf16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_bf16 + r * ldo + h * kRows), to_bf16_rne(v));
    }
}
#endif

// The sizes of one int4 x bf16 call: M, K, N and the number of scale groups
struct W4Shape {
  int64_t rows, depth, cols, groups;
};

// The operand checks both variants share

W4Shape check_w4_operands(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scale,
                          int64_t group_size, int64_t activation) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && x.dim() == 2 && x.is_contiguous(),
              "x: contiguous (M, K) bfloat16 on CPU");
  const int64_t rows = x.size(0), depth = x.size(1);
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.dim() == 4 && codes.is_contiguous() &&
                  codes.size(1) * kPairDepth == depth && codes.size(2) == kRows && codes.size(3) == kRows,
              "codes: (N/16, K/32, 16, 16) uint8 matching x's K");
  const int64_t cols = codes.size(0) * kRows;
  TORCH_CHECK(group_size > 0 && group_size % kPairDepth == 0 && depth % group_size == 0,
              "group_size: a multiple of 32 dividing K");
  const int64_t groups = depth / group_size;
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.dim() == 2 && scale.size(0) == groups &&
                  scale.size(1) == cols && scale.is_contiguous(), "scale: (G, N) float32");
  TORCH_CHECK(activation == 0 || activation == 1, "activation: 0 (none) or 1 (GELU)");
  return {rows, depth, cols, groups};
}

// The product both variants share. unpack(block_codes, n0, ld, k_tiles, tiles_per_group, dst) writes the bf16 B
// tiles of the 16-column block starting at column n0, whose codes start at block_codes, to dst.
template <typename Unpack>
std::vector<torch::Tensor> w4_linear(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scale,
                                     int64_t group_size, const W4Shape& shape, const torch::Tensor& bias,
                                     int64_t activation, bool bf16_out, const Unpack& unpack_columns) {
  const int64_t rows = shape.rows, depth = shape.depth, cols = shape.cols;
  const bool has_bias = check_bias(cols, bias);
  auto out = torch::empty({rows, cols}, scale.options());
  auto out_bf16 = torch::empty({bf16_out ? rows : 0, cols}, x.options());
#ifdef LEANFORMER_HAVE_AMX_BF16
  TORCH_CHECK(request_tiles(), "AMX tiles unavailable (arch_prctl XCOMP_PERM refused)");
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  auto* obp = bf16_out ? reinterpret_cast<uint16_t*>(out_bf16.data_ptr()) : nullptr;
  const int64_t k_tiles = depth / kPairDepth;
  const int64_t col_blocks16 = cols / kRows, row_blocks = (rows + kBlock - 1) / kBlock;
  const int64_t panels = (col_blocks16 + kPanelBlocks - 1) / kPanelBlocks;
  const int64_t block_values = k_tiles * kWeightTile;  // bf16 values of one unpacked 16-column block
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const int64_t tiles_per_group = group_size / kPairDepth;
  const auto unpack = [&](int64_t block, uint16_t* dst) {
    unpack_columns(cp + block * k_tiles * kCodeTile, block * kRows, cols, k_tiles, tiles_per_group, dst);
  };
  // row blocks [rb_begin, rb_end) against the `count` unpacked 16-column blocks from block `first`, at `weights`
  const auto run_rows = [&](const uint16_t* weights, int64_t first, int64_t count, int64_t rb_begin, int64_t rb_end,
                            float* acc, std::vector<uint16_t>& padded) {
    for (int64_t rb = rb_begin; rb < rb_end; ++rb) {
      const int64_t m0 = rb * kBlock, valid = std::min(kBlock, rows - m0);
      if (valid < kBlock && padded.empty()) {  // the last, partial row block, zero-filled to 32 rows
        padded.assign(kBlock * depth, 0);
        std::memcpy(padded.data(), xp + m0 * depth, valid * depth * sizeof(uint16_t));
      }
      const uint16_t* a = valid < kBlock ? padded.data() : xp + m0 * depth;
      for (int64_t b = 0; b < count; b += 2) {
        const bool pair = b + 1 < count;
        const uint16_t* b0 = weights + b * block_values;
        block_sums<Dot::kBf16>(a, depth * 2, b0, b0 + block_values, k_tiles, pair, acc);
        const int64_t n0 = (first + b) * kRows;
        epilogue_store(acc, valid, pair ? 2 : 1, bp ? bp + n0 : nullptr, activation == 1, op + m0 * cols + n0,
                       obp ? obp + m0 * cols + n0 : nullptr, cols);
      }
    }
  };
  const int64_t threads = at::get_num_threads();
  if (threads == 1 || panels >= 2 * threads) {
    // tasks are column panels: each unpacks its panel once, into a buffer that stays in L2, and runs every row
    // block against it
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      configure_tiles();
      alignas(64) float acc[kBlock * kBlock];
      std::vector<uint16_t> panel(kPanelBlocks * block_values), padded;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t first = p * kPanelBlocks, count = std::min(kPanelBlocks, col_blocks16 - first);
        for (int64_t b = 0; b < count; ++b) unpack(first + b, panel.data() + b * block_values);
        run_rows(panel.data(), first, count, 0, row_blocks, acc, padded);
      }
      _tile_release();
    });
  } else {
    // too few panels to keep every thread busy: unpack the whole weight once, split between the threads, then
    // split every panel's row blocks between them
    std::vector<uint16_t> weights(col_blocks16 * block_values);
    at::parallel_for(0, col_blocks16, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) unpack(b, weights.data() + b * block_values);
    });
    const int64_t splits = std::min(row_blocks, (2 * threads + panels - 1) / panels);
    const int64_t rows_per_split = (row_blocks + splits - 1) / splits;
    at::parallel_for(0, panels * splits, 1, [&](int64_t begin, int64_t end) {
      configure_tiles();
      alignas(64) float acc[kBlock * kBlock];
      std::vector<uint16_t> padded;
      for (int64_t u = begin; u < end; ++u) {
        const int64_t p = u / splits, rb_begin = (u % splits) * rows_per_split;
        const int64_t first = p * kPanelBlocks, count = std::min(kPanelBlocks, col_blocks16 - first);
        run_rows(weights.data() + first * block_values, first, count, rb_begin,
                 std::min(row_blocks, rb_begin + rows_per_split), acc, padded);
      }
      _tile_release();
    });
  }
#else
  TORCH_CHECK(false, "amx_w4_linear: built without AMX-BF16 (this CPU or compiler has none)");
#endif
  return {out, out_bf16};
}
}  // namespace

// x (M, K) bfloat16 contiguous, codes (N/16, K/32, 16, 16) uint8, zero / scale (G, N) float32, group_size,
// bias (N,) float32 or empty, activation (0 none, 1 GELU), bf16_out ->
//   {out (M, N) float32, and when bf16_out: out.to(bfloat16), written from the same registers}
std::vector<torch::Tensor> amx_w4_linear(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& zero,
                                         const torch::Tensor& scale, int64_t group_size, const torch::Tensor& bias,
                                         int64_t activation, bool bf16_out) {
  const W4Shape shape = check_w4_operands(x, codes, scale, group_size, activation);
  TORCH_CHECK(zero.scalar_type() == torch::kFloat32 && zero.sizes() == scale.sizes() && zero.is_contiguous(),
              "zero: (G, N) float32");
  const float* zp = zero.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  return w4_linear(x, codes, scale, group_size, shape, bias, activation, bf16_out,
                   [&](const uint8_t* block_codes, int64_t n0, int64_t ld, int64_t k_tiles, int64_t tiles_per_group,
                       uint16_t* dst) {
                     unpack_block(block_codes, zp + n0, sp + n0, ld, k_tiles, tiles_per_group, dst);
                   });
}

// The same product for codebook weights, w = bf16(table[ids[g, n]][q] * scale[g, n]): table (T, 16) float32 of
// bf16-exact values, ids (G, N) int32 in [0, T), scale (G, N) float32 of bf16 values; other operands as above
std::vector<torch::Tensor> amx_w4_codebook_linear(const torch::Tensor& x, const torch::Tensor& codes,
                                                  const torch::Tensor& table, const torch::Tensor& ids,
                                                  const torch::Tensor& scale, int64_t group_size,
                                                  const torch::Tensor& bias, int64_t activation, bool bf16_out) {
  const W4Shape shape = check_w4_operands(x, codes, scale, group_size, activation);
  TORCH_CHECK(table.scalar_type() == torch::kFloat32 && table.dim() == 2 && table.size(0) > 0 &&
                  table.size(1) == 16 && table.is_contiguous(), "table: (T, 16) float32");
  TORCH_CHECK(ids.scalar_type() == torch::kInt32 && ids.sizes() == scale.sizes() && ids.is_contiguous(),
              "ids: (G, N) int32");
  const int32_t* ip = ids.data_ptr<int32_t>();
  const int64_t rows_in_table = table.size(0);
  // an id outside the table would read other memory: checked on every call (G * N ints, far below the product)
  for (int64_t i = 0; i < ids.numel(); ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < rows_in_table, "ids: values in [0, T), found ", ip[i], " with T = ",
                rows_in_table);
  const float* tp = table.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  return w4_linear(x, codes, scale, group_size, shape, bias, activation, bf16_out,
                   [&](const uint8_t* block_codes, int64_t n0, int64_t ld, int64_t k_tiles, int64_t tiles_per_group,
                       uint16_t* dst) {
                     unpack_block_codebook(block_codes, tp, rows_in_table, ip + n0, sp + n0, ld, k_tiles, tiles_per_group,
                                           dst);
                   });
}

bool amx_w4_ready() {
#ifdef LEANFORMER_HAVE_AMX_BF16
  return request_tiles();
#else
  return false;
#endif
}
