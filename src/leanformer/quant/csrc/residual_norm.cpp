// LayerNorm(x + residual) in one pass over each row, with the per-token int8 codes of the result for the next
// W8A8 layers (loaded by leanformer.quant.native; the Python side is leanformer.quant.fusion's
// FusedResidualNorm).
//
// Why: after the attention-output and FFN-output GEMMs of a BERT layer, torch runs three passes over the
// (tokens, hidden) activations - the residual add, LayerNorm, and the next layer's quantization - each
// reading the whole tensor from memory. Here each row is added, normalised and quantized while it is in L1.
//
// Arithmetic: s = x + residual exactly as torch's add; mean and variance in float32 by two passes over the
// row (torch uses a different summation order, so results are close to torch's, not bit for bit; the bound
// against float64 is residual_norm.norm_reference's); out = ((s - mean) * rstd) * weight + bias (one fused
// multiply-add on AVX512 CPUs). The
// codes are quantize_row's (row_quant.h), so they equal quantize_rows(out) bit for bit.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "row_norm.h"
#include "row_quant.h"

// row_norm.h: one row, out = LayerNorm(x + r) with float32 two-pass moments (out may alias x). On AVX512 CPUs each
// sum runs in four 16-float accumulators, in a fixed order written out below: the plain loops' one accumulator made
// every addition wait for the one before (4 cycles on Zen 4), ~600 cycles per 384-float row with the codes, which
// was a fifth of the 576 x 384 x 384 self-output product's time. The variance's squares and the final scaling use
// fused multiply-adds (one rounding each). Without AVX512 the plain loops below run (other bits, same bound).
__attribute__((noinline)) void norm_row(const float* x, const float* r, const float* w, const float* b, int64_t n,
                                        float eps, float* out) {
#if defined(__AVX512F__)
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t k = 0;
  for (; k + 64 <= n; k += 64)
    for (int j = 0; j < 4; ++j) {
      const __m512 s = _mm512_add_ps(_mm512_loadu_ps(x + k + 16 * j), _mm512_loadu_ps(r + k + 16 * j));
      _mm512_storeu_ps(out + k + 16 * j, s);
      acc[j] = _mm512_add_ps(acc[j], s);
    }
  for (int j = 0; k < n; k += 16, j = (j + 1) % 4) {  // masked-off lanes are 0
    const __mmask16 live = tail_mask(n - k);
    const __m512 s = _mm512_add_ps(_mm512_maskz_loadu_ps(live, x + k), _mm512_maskz_loadu_ps(live, r + k));
    _mm512_mask_storeu_ps(out + k, live, s);
    acc[j] = _mm512_add_ps(acc[j], s);
  }
  const float mean = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]))) /
                     static_cast<float>(n);
  const __m512 vmean = _mm512_set1_ps(mean);
  for (auto& a : acc) a = _mm512_setzero_ps();
  k = 0;
  for (; k + 64 <= n; k += 64)
    for (int j = 0; j < 4; ++j) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(out + k + 16 * j), vmean);
      acc[j] = _mm512_fmadd_ps(d, d, acc[j]);
    }
  for (int j = 0; k < n; k += 16, j = (j + 1) % 4) {
    const __mmask16 live = tail_mask(n - k);
    const __m512 d = _mm512_maskz_sub_ps(live, _mm512_maskz_loadu_ps(live, out + k), vmean);
    acc[j] = _mm512_fmadd_ps(d, d, acc[j]);
  }
  const float sq = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(sq / static_cast<float>(n) + eps));
  for (k = 0; k < n; k += 16) {
    const __mmask16 live = tail_mask(n - k);
    const __m512 z = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, out + k), vmean), rstd);
    _mm512_mask_storeu_ps(out + k, live,
                          _mm512_fmadd_ps(z, _mm512_maskz_loadu_ps(live, w + k), _mm512_maskz_loadu_ps(live, b + k)));
  }
#else
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) {
    const float s = x[k] + r[k];
    out[k] = s;
    sum += s;
  }
  const float mean = sum / static_cast<float>(n);
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t k = 0; k < n; ++k) {
    const float d = out[k] - mean;
    sq += d * d;
  }
  const float rstd = 1.f / std::sqrt(sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = (out[k] - mean) * rstd * w[k] + b[k];
#endif
}

// x, residual (M, N) float32 contiguous; weight, bias (N,) float32; eps; quantize ->
//   {out (M, N) = LayerNorm(x + residual), and when `quantize`: codes (M, N) int8, scale (M, 1), finite (bool)}
std::vector<torch::Tensor> residual_layer_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                               const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                               bool quantize) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "x: contiguous (M, N) float32 on CPU");
  TORCH_CHECK(residual.scalar_type() == torch::kFloat32 && residual.sizes() == x.sizes() && residual.is_contiguous(),
              "residual: contiguous float32 of x's shape ", x.sizes(), ", got ", residual.sizes());
  const int64_t rows = x.size(0), cols = x.size(1);
  for (const auto* t : {&weight, &bias})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 1 && t->size(0) == cols && t->is_contiguous(),
                "weight and bias: contiguous (", cols, ",) float32");
  auto out = torch::empty({rows, cols}, x.options());
  auto codes = torch::empty({quantize ? rows : 0, cols}, x.options().dtype(torch::kInt8));
  auto scale = torch::empty({quantize ? rows : 0, 1}, x.options());
  std::atomic<bool> finite{true};
  const float *xp = x.data_ptr<float>(), *rp = residual.data_ptr<float>();
  const float *wp = weight.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      norm_row(xp + m * cols, rp + m * cols, wp, bp, cols, e, op + m * cols);
      if (quantize && !quantize_row(op + m * cols, cols, codes.data_ptr<int8_t>() + m * cols,
                                    scale.data_ptr<float>() + m))
        finite = false;
    }
  });
  return {out, codes, scale, torch::scalar_tensor(finite.load(), torch::kBool)};
}
