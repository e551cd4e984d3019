// Fused CPU passes around torch._int_mm for dynamic W8A8 (leanformer.quant.native).
//
// The eager path spends ~5 full passes quantizing activations (amax, amin, multiply, round, cast) and 4
// rescaling the int32 product (cast, two multiplies, bias). Each function below does the same arithmetic,
// in the same order and with the same float rounding, in one sweep per row, while the row sits in L1:
// outputs are bit-identical to kernels.quantize_per_token / kernels._w8a8 (tested). Built with
// -ffp-contract=off so the compiler cannot fuse a*b+c into an FMA and change the rounding.
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <vector>

// x (M, K) float32, contiguous -> {codes (M, K) int8, scale (M, 1) float32, ok (bool: all finite)}.
// scale = max(|x_row|, 1e-8) / 127; codes = round_half_even(x * ((1 / max) * 127)).
std::vector<torch::Tensor> quantize_rows(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "quantize_rows expects a contiguous 2-D float32 CPU tensor");
  const int64_t rows = x.size(0), cols = x.size(1);
  auto codes = torch::empty({rows, cols}, x.options().dtype(torch::kInt8));
  auto scale = torch::empty({rows, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = codes.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  bool finite = true;
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = xp + m * cols;
    float absmax = 0.f, probe = 0.f;  // probe becomes NaN iff the row holds a NaN or an inf
#pragma omp simd reduction(max : absmax) reduction(+ : probe)
    for (int64_t k = 0; k < cols; ++k) {
      const float a = std::fabs(row[k]);
      absmax = a > absmax ? a : absmax;
      probe += row[k] * 0.f;
    }
    if (!(probe == 0.f)) {
      finite = false;
      break;
    }
    absmax = absmax > 1e-8f ? absmax : 1e-8f;
    // the eager code writes 127.0 / absmax, which torch evaluates as reciprocal(absmax) * 127 (two roundings)
    const float inv = (1.f / absmax) * 127.f;
    int8_t* out = qp + m * cols;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) out[k] = static_cast<int8_t>(std::nearbyint(row[k] * inv));
    sp[m] = absmax / 127.f;
  }
  return {codes, scale, torch::scalar_tensor(finite, torch::kBool)};
}

// acc (M, N) int32, row_scale (M, 1), col_scale (N,), bias (N,) or empty -> (M, N) float32:
// ((float(acc) * row_scale) * col_scale) + bias, each step rounded to float32 as the eager ops do.
torch::Tensor rescale_int32(const torch::Tensor& acc, const torch::Tensor& row_scale, const torch::Tensor& col_scale,
                            const torch::Tensor& bias) {
  TORCH_CHECK(acc.scalar_type() == torch::kInt32 && acc.dim() == 2 && acc.is_contiguous(), "acc: (M, N) int32");
  const int64_t rows = acc.size(0), cols = acc.size(1);
  TORCH_CHECK(row_scale.scalar_type() == torch::kFloat32 && row_scale.numel() == rows && row_scale.is_contiguous(),
              "row_scale: (M, 1) float32");
  TORCH_CHECK(col_scale.scalar_type() == torch::kFloat32 && col_scale.numel() == cols && col_scale.is_contiguous(),
              "col_scale: (N,) float32");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == torch::kFloat32 && bias.numel() == cols && bias.is_contiguous()),
              "bias: (N,) float32");
  auto out = torch::empty({rows, cols}, acc.options().dtype(torch::kFloat32));
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* rp = row_scale.data_ptr<float>();
  const float* cp = col_scale.data_ptr<float>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t* a = ap + m * cols;
    float* o = op + m * cols;
    const float r = rp[m];
    if (has_bias) {
#pragma omp simd
      for (int64_t n = 0; n < cols; ++n) o[n] = static_cast<float>(a[n]) * r * cp[n] + bp[n];
    } else {
#pragma omp simd
      for (int64_t n = 0; n < cols; ++n) o[n] = static_cast<float>(a[n]) * r * cp[n];
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize_rows", &quantize_rows, "per-row symmetric int8 quantization (fused)");
  m.def("rescale_int32", &rescale_int32, "int32 GEMM result -> float32 with row/column scales and bias (fused)");
}
