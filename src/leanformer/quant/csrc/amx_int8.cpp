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

#include "int8_linear_operands.h"
#include "row_quant.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "amx_tiles.h"
#include "gelu_avx512.h"

namespace {
using namespace amx;

#ifdef LEANFORMER_HAVE_AMX
enum Activation : int64_t { kNone = 0, kGelu = 1 };

// out[r, c] = act(((float(acc[r, c]) * rs[r]) * cs[c]) + bias[c]) for `rows` rows and 16 * `halves` columns
void rescale_block(const int32_t* acc, int64_t rows, int halves, const float* rs, const float* cs, const float* bias,
                   int64_t act, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 row = _mm512_set1_ps(rs[r]);
    for (int h = 0; h < halves; ++h) {
      __m512 v = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + r * kBlock + h * kRows));  // exact RNE, like a cast
      v = _mm512_mul_ps(_mm512_mul_ps(v, row), _mm512_loadu_ps(cs + h * kRows));
      if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + h * kRows));
      if (act == kGelu) v = gelu_erf(v);
      _mm512_storeu_ps(out + r * ldo + h * kRows, v);
    }
  }
}
#endif

#if defined(__AVX512F__)
// Applies gelu_erf to n floats in place (the tests compare it with F.gelu; the VNNI kernel's epilogue uses it too)
void gelu_inplace(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu_erf(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 mask = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, mask, gelu_erf(_mm512_maskz_loadu_ps(mask, x + i)));
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

#ifdef LEANFORMER_HAVE_AMX
namespace {
// The product of io's operands into io.out, each task's finished rows handed to io.finish_rows; false if one of
// them held a NaN or an inf
bool amx_product(const Int8Linear& io, int64_t activation) {
  TORCH_CHECK(request_tiles(), "AMX tiles unavailable: ", amx_int8_status());
  const int64_t rows = io.rows, depth = io.depth, cols = io.cols;
  std::atomic<bool> finite{true};
  const int8_t *ap = io.a, *bp = io.b;
  const float *rp = io.row_scale, *cp = io.col_scale, *biasp = io.bias;
  const int64_t k_tiles = depth / kDepth, col_blocks = (cols + kBlock - 1) / kBlock;
  const int64_t row_blocks = (rows + kBlock - 1) / kBlock, units = row_blocks * col_blocks;
  const int64_t panel = depth * kRows;  // bytes of one packed 16-column block
  // Work units are (row block, column block) pairs, row-major. Quantizing or normalising needs whole rows in one
  // task, and A stays in L1 across a row's column blocks, so tasks hold whole row blocks - except for small
  // batches without either, which are split by column block so that both cores get work.
  const bool finish = io.finishes_rows();
  const bool whole_rows = finish || row_blocks >= 2 * at::get_num_threads();
  at::parallel_for(0, whole_rows ? row_blocks : units, 1, [&](int64_t begin, int64_t end) {
    configure_tiles();  // tile configuration is per thread
    alignas(64) int32_t acc[kBlock * kBlock];
    std::vector<int8_t> padded;  // the last, partial row block, zero-filled to 32 rows
    std::vector<float> scratch(io.codes_only ? kBlock * cols : 0);  // one row block's floats (codes_only)
    const int64_t first = whole_rows ? begin * col_blocks : begin, last = whole_rows ? end * col_blocks : end;
    for (int64_t u = first; u < last; ++u) {
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
      block_sums<Dot::kInt8>(a, depth, b0, b0 + panel, k_tiles, pair, acc);
      float* rows_out = io.row_block(m0, scratch.data());
      rescale_block(acc, valid, pair ? 2 : 1, rp + m0, cp + n0, biasp ? biasp + n0 : nullptr, activation,
                    rows_out + n0, cols);
      if (finish && n0 + kBlock >= cols && !io.finish_rows(m0, valid, rows_out)) finite = false;  // the block is done
    }
    _tile_release();
  });
  return finite.load();
}
}  // namespace
#endif

namespace {
// io's product on AMX tiles, as the ops return it; `op` names the op in the error of a build without AMX
std::vector<torch::Tensor> run_amx(const Int8Linear& io, int64_t activation, const char* op) {
#ifdef LEANFORMER_HAVE_AMX
  return io.outputs(amx_product(io, activation));
#else
  TORCH_CHECK(false, op, ": ", amx_int8_status());
  return {};
#endif
}
}  // namespace

// xq (M, K) int8 contiguous, row_scale (M, 1) float32, packed (N/16, K/64, 16, 64) int8, col_scale (N,) float32,
// bias (N,) float32 or empty, activation (0 none, 1 GELU), quantize ->
//   {out (M, N) float32, and when `quantize`: codes (M, N) int8, scale (M, 1), finite (bool)}, the codes being
//   quantize_rows(out)'s, computed from each 32-row block while it is still in cache
std::vector<torch::Tensor> amx_int8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                           const torch::Tensor& packed, const torch::Tensor& col_scale,
                                           const torch::Tensor& bias, int64_t activation, bool quantize) {
  return run_amx(check_int8_linear(xq, row_scale, packed, col_scale, bias, activation, quantize), activation,
                 "amx_int8_linear");
}

// amx_int8_linear with `quantize` for a caller that wants only the codes, as vnni_int8_linear_codes: {out (0, N),
// codes, scale, finite}
std::vector<torch::Tensor> amx_int8_linear_codes(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                 const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                 const torch::Tensor& bias, int64_t activation) {
  return run_amx(check_int8_linear(xq, row_scale, packed, col_scale, bias, activation, true, true), activation,
                 "amx_int8_linear_codes");
}

// amx_int8_linear without activation, then LayerNorm(out + residual) on each finished row and its codes, as
// vnni_int8_linear_norm (vnni_int8.cpp): equal bit for bit to residual_layer_norm of amx_int8_linear's output
std::vector<torch::Tensor> amx_int8_linear_norm(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                const torch::Tensor& bias, const torch::Tensor& residual,
                                                const torch::Tensor& weight, const torch::Tensor& norm_bias,
                                                double eps) {
  Int8Linear io = check_int8_linear(xq, row_scale, packed, col_scale, bias, 0, true);
  attach_residual_norm(io, residual, weight, norm_bias, eps);
  return run_amx(io, 0, "amx_int8_linear_norm");
}

// x (M, N) float32 contiguous: GELU in place with the AMX and VNNI kernels' epilogue function (for tests)
torch::Tensor amx_gelu_(torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "x: contiguous float32 on CPU");
#if defined(__AVX512F__)
  gelu_inplace(x.data_ptr<float>(), x.numel());
#else
  TORCH_CHECK(false, "amx_gelu_: built without AVX512F");
#endif
  return x;
}
