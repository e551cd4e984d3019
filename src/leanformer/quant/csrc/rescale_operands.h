// Operand checks shared by the epilogues (quant_cpu.cpp's rescale_rows_cols, amx_int8.cpp, amx_w4.cpp).
#pragma once
#include <torch/extension.h>

// bias (N,) float32 contiguous, or empty for none; returns whether there is a bias
inline bool check_bias(int64_t cols, const torch::Tensor& bias) {
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == torch::kFloat32 && bias.numel() == cols && bias.is_contiguous()),
              "bias: (N,) float32");
  return has_bias;
}

// row_scale (M, 1), col_scale (N,) and bias (N,) or empty, all float32 and contiguous; returns whether there is a bias
inline bool check_rescale_operands(int64_t rows, int64_t cols, const torch::Tensor& row_scale,
                                   const torch::Tensor& col_scale, const torch::Tensor& bias) {
  TORCH_CHECK(row_scale.scalar_type() == torch::kFloat32 && row_scale.numel() == rows && row_scale.is_contiguous(),
              "row_scale: (M, 1) float32");
  TORCH_CHECK(col_scale.scalar_type() == torch::kFloat32 && col_scale.numel() == cols && col_scale.is_contiguous(),
              "col_scale: (N,) float32");
  return check_bias(cols, bias);
}
