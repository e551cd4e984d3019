// W8A8's int8 x int8 product on Intel AMX tiles, with the per-token / per-channel rescale and the bias fused
// into the store (loaded by leanformer.quant.native; the Python side is leanformer.quant.amx).
//
// Why our own kernel: oneDNN's brgemm (onednn.py) reaches ~30% of this CPU's AMX peak on MiniLM's
// FFN-in shape (576x384 @ 384x1536: 540 GOP/s against ~1.9 TOP/s for bare TDPBSSD), writes a float32 copy of
// the integer sums, and the rescale then reads and rewrites it. Here each 32x32 block of sums goes from the
// tiles to a 4 KB buffer, is rescaled while it is in L1, and is written once.
//
// Arithmetic: acc is the exact int32 sum; out = ((float(acc) * row_scale) * col_scale) + bias, each step
// rounded to float32 (no FMA), the same operations as torch._int_mm followed by rescale_int32 in quant_cpu.cpp,
// so outputs are bit-identical (tested with torch.equal).
//
// Weight layout (amx.py, pack_amx_weight): (N/16, K/64, 16, 64) int8, tile (n, k) holds
// w[16n + j, 64k + 4r + t] at row r, byte 4j + t - the "VNNI" order TDPBSSD reads its second operand in.
// Needs K % 64 == 0 and N % 16 == 0; other shapes keep the other products.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "rescale_operands.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__) && defined(__linux__)
#define LEANFORMER_HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {
constexpr int64_t kRows = 16;    // rows of one tile
constexpr int64_t kDepth = 64;   // int8 products per tile row: K consumed by one TDPBSSD
constexpr int64_t kBlock = 32;   // output rows (and columns) per 2x2 block of accumulator tiles
constexpr int64_t kTileBytes = kRows * kDepth;

#ifdef LEANFORMER_HAVE_AMX
// Linux hands out the 8 KB of tile state only on request, once per process (arch_prctl ARCH_REQ_XCOMP_PERM).
bool request_tiles() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;
  static const bool granted = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0;
  return granted;
}

struct TileConfig {  // the 64-byte operand of LDTILECFG, palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tiles 0-3: int32 accumulators C[rows 0-15 | 16-31][cols 0-15 | 16-31]; 4-5: A row halves; 6-7: B column halves
void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kRows;
    cfg.colsb[t] = kDepth;  // 64 bytes: 16 int32 accumulators, 64 int8 of A, or 16 columns x 4 int8 of B
  }
  _tile_loadconfig(&cfg);
}

// sums for one 32x32 block (or 32x16 when `pair` is false): a (32, K) rows of A, b0/b1 the packed 16-column
// blocks -> acc (32, 32) int32
void block_sums(const int8_t* a, int64_t lda, const int8_t* b0, const int8_t* b1, int64_t k_tiles, bool pair,
                int32_t* acc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    _tile_loadd(4, a + kt * kDepth, lda);
    _tile_loadd(5, a + kRows * lda + kt * kDepth, lda);
    _tile_loadd(6, b0 + kt * kTileBytes, kDepth);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(2, 5, 6);
    if (pair) {
      _tile_loadd(7, b1 + kt * kTileBytes, kDepth);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(3, 5, 7);
    }
  }
  constexpr int64_t ld = kBlock * sizeof(int32_t);
  _tile_stored(0, acc, ld);
  _tile_stored(2, acc + kRows * kBlock, ld);
  if (pair) {
    _tile_stored(1, acc + kRows, ld);
    _tile_stored(3, acc + kRows * kBlock + kRows, ld);
  }
}

// out[r, c] = ((float(acc[r, c]) * rs[r]) * cs[c]) + bias[c] for `rows` rows and 16 * `halves` columns
void rescale_block(const int32_t* acc, int64_t rows, int halves, const float* rs, const float* cs, const float* bias,
                   float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 row = _mm512_set1_ps(rs[r]);
    for (int h = 0; h < halves; ++h) {
      __m512 v = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + r * kBlock + h * kRows));  // exact RNE, like a cast
      v = _mm512_mul_ps(_mm512_mul_ps(v, row), _mm512_loadu_ps(cs + h * kRows));
      if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + h * kRows));
      _mm512_storeu_ps(out + r * ldo + h * kRows, v);
    }
  }
}
#endif
}  // namespace

bool amx_int8_ready() {
#ifdef LEANFORMER_HAVE_AMX
  return request_tiles();
#else
  return false;
#endif
}

std::string amx_int8_status() {
#ifdef LEANFORMER_HAVE_AMX
  return request_tiles() ? "on" : "off: the kernel refused the AMX tile state (arch_prctl XCOMP_PERM)";
#else
  return "off: built without AMX-INT8 (this CPU or compiler has none)";
#endif
}

// xq (M, K) int8 contiguous, row_scale (M, 1) float32, packed (N/16, K/64, 16, 64) int8, col_scale (N,) float32,
// bias (N,) float32 or empty -> (M, N) float32
torch::Tensor amx_int8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale, const torch::Tensor& packed,
                              const torch::Tensor& col_scale, const torch::Tensor& bias) {
  TORCH_CHECK(xq.device().is_cpu() && xq.scalar_type() == torch::kInt8 && xq.dim() == 2 && xq.is_contiguous(),
              "xq: contiguous (M, K) int8 on CPU");
  const int64_t rows = xq.size(0), depth = xq.size(1);
  TORCH_CHECK(packed.scalar_type() == torch::kInt8 && packed.dim() == 4 && packed.is_contiguous() &&
                  packed.size(1) * kDepth == depth && packed.size(2) == kRows && packed.size(3) == kDepth,
              "packed: (N/16, K/64, 16, 64) int8 matching xq's K");
  const int64_t cols = packed.size(0) * kRows;
  const bool has_bias = check_rescale_operands(rows, cols, row_scale, col_scale, bias);
  auto out = torch::empty({rows, cols}, row_scale.options());
#ifdef LEANFORMER_HAVE_AMX
  TORCH_CHECK(request_tiles(), "AMX tiles unavailable: ", amx_int8_status());
  if (rows == 0) return out;
  const int8_t* ap = xq.data_ptr<int8_t>();
  const int8_t* bp = packed.data_ptr<int8_t>();
  const float* rp = row_scale.data_ptr<float>();
  const float* cp = col_scale.data_ptr<float>();
  const float* biasp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t k_tiles = depth / kDepth, col_blocks = (cols + kBlock - 1) / kBlock;
  const int64_t row_blocks = (rows + kBlock - 1) / kBlock, units = row_blocks * col_blocks;
  const int64_t panel = depth * kRows;  // bytes of one packed 16-column block
  // one row block per task when there are enough of them (A stays in L1 across its column blocks), else
  // single blocks so that both cores get work on small batches
  const int64_t grain = row_blocks >= 2 * at::get_num_threads() ? col_blocks : 1;
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    configure_tiles();  // tile configuration is per thread
    alignas(64) int32_t acc[kBlock * kBlock];
    std::vector<int8_t> padded;  // the last, partial row block, zero-filled to 32 rows
    for (int64_t u = begin; u < end; ++u) {
      const int64_t m0 = (u / col_blocks) * kBlock, n0 = (u % col_blocks) * kBlock;
      const int64_t valid = std::min(kBlock, rows - m0);
      const int8_t* a = ap + m0 * depth;
      if (valid < kBlock) {
        if (padded.empty()) {
          padded.assign(kBlock * depth, 0);
          std::memcpy(padded.data(), a, valid * depth);
        }
        a = padded.data();
      }
      const bool pair = n0 + kBlock <= cols;
      const int8_t* b0 = bp + (n0 / kRows) * panel;
      block_sums(a, depth, b0, b0 + panel, k_tiles, pair, acc);
      rescale_block(acc, valid, pair ? 2 : 1, rp + m0, cp + n0, biasp ? biasp + n0 : nullptr, op + m0 * cols + n0,
                    cols);
    }
    _tile_release();
  });
#else
  TORCH_CHECK(false, "amx_int8_linear: ", amx_int8_status());
#endif
  return out;
}
