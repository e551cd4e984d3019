// The operand checks and outputs of the two fused int8 kernels (amx_int8.cpp, vnni_int8.cpp), which take the
// same packed weight and return the same tensors.
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <vector>

#include "rescale_operands.h"
#include "row_norm.h"
#include "row_quant.h"

struct Int8Linear {
  int64_t rows, depth, cols;
  bool has_bias;
  torch::Tensor out, codes, scale;  // (M, N) float32; (M, N) int8 and (M, 1) float32, or empty without `quantize`
  // the operands' and the output's data
  const int8_t *a, *b;
  const float *row_scale, *col_scale, *bias;  // bias: nullptr without one
  float* y;
  // the residual LayerNorm epilogue (attach_residual_norm), or nullptr
  const float *residual = nullptr, *norm_weight = nullptr, *norm_bias = nullptr;
  float eps = 0.f;
  bool quantize = false;  // the codes and scales of each finished row are wanted
  // only the codes and scales are wanted (check_int8_linear): each task writes its row block's floats to a scratch
  // block of its own instead of `out`, which is empty
  bool codes_only = false;

  // an op's return value: {out, codes, scale, finite}
  std::vector<torch::Tensor> outputs(bool finite) const {
    return {out, codes, scale, torch::scalar_tensor(finite, torch::kBool)};
  }

  // true when finish_rows has work: the kernels then hand each task whole rows
  bool finishes_rows() const { return quantize || residual != nullptr; }

  // where the floats of the row block starting at row m0 go: `out`'s rows, or the task's scratch block (rows
  // `cols` apart, as in `out`)
  float* row_block(int64_t m0, float* scratch) const { return codes_only ? scratch : y + m0 * cols; }

  // rows m0 .. m0 + valid hold their final sums in `block` (row_block's): LayerNorm(row + residual) in place when
  // a residual norm is attached (residual_layer_norm's bits), then their codes and scales when quantizing
  // (quantize_rows' bits); false if a row holds a NaN or an inf
  bool finish_rows(int64_t m0, int64_t valid, float* block) const {
    bool finite = true;
    for (int64_t m = m0; m < m0 + valid; ++m) {
      float* row = block + (m - m0) * cols;
      if (residual) norm_row(row, residual + m * cols, norm_weight, norm_bias, cols, eps, row);
      if (quantize && !quantize_row(row, cols, codes.data_ptr<int8_t>() + m * cols, scale.data_ptr<float>() + m))
        finite = false;
    }
    return finite;
  }
};

// xq (M, K) int8 contiguous, row_scale (M, 1), packed (N/16, K/64, 16, 64) int8, col_scale (N,), bias (N,) or
// empty, activation 0 (none) or 1 (GELU): checked, with the outputs allocated. `codes_only` (with `quantize`):
// the caller wants only the codes and scales, so `out` is (0, N) and the kernels keep each row block's floats in
// a scratch block while they make its codes (a 576 x 1536 MiniLM FFN-in output is 3.5 MB of floats that the
// next product never reads)
inline Int8Linear check_int8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                    const torch::Tensor& packed, const torch::Tensor& col_scale,
                                    const torch::Tensor& bias, int64_t activation, bool quantize,
                                    bool codes_only = false) {
  constexpr int64_t kCols = 16, kDepth = 64;
  TORCH_CHECK(xq.device().is_cpu() && xq.scalar_type() == torch::kInt8 && xq.dim() == 2 && xq.is_contiguous(),
              "xq: contiguous (M, K) int8 on CPU");
  const int64_t rows = xq.size(0), depth = xq.size(1);
  TORCH_CHECK(packed.scalar_type() == torch::kInt8 && packed.dim() == 4 && packed.is_contiguous() &&
                  packed.size(1) * kDepth == depth && packed.size(2) == kCols && packed.size(3) == kDepth,
              "packed: (N/16, K/64, 16, 64) int8 matching xq's K");
  TORCH_CHECK(activation == 0 || activation == 1, "activation: 0 (none) or 1 (GELU)");
  TORCH_CHECK(quantize || !codes_only, "codes_only needs quantize");
  const int64_t cols = packed.size(0) * kCols;
  const bool has_bias = check_rescale_operands(rows, cols, row_scale, col_scale, bias);
  Int8Linear io{rows, depth, cols, has_bias, torch::empty({codes_only ? 0 : rows, cols}, row_scale.options()),
                torch::empty({quantize ? rows : 0, cols}, xq.options()),
                torch::empty({quantize ? rows : 0, 1}, row_scale.options())};
  io.a = xq.data_ptr<int8_t>();
  io.b = packed.data_ptr<int8_t>();
  io.row_scale = row_scale.data_ptr<float>();
  io.col_scale = col_scale.data_ptr<float>();
  io.bias = has_bias ? bias.data_ptr<float>() : nullptr;
  io.y = io.out.data_ptr<float>();
  io.quantize = quantize;
  io.codes_only = codes_only;
  return io;
}

// LayerNorm(out + residual) with `weight`, `bias` and `eps` applied to each finished row (finish_rows): residual
// (M, N), weight and bias (N,), all contiguous float32 on the CPU, checked
inline void attach_residual_norm(Int8Linear& io, const torch::Tensor& residual, const torch::Tensor& weight,
                                 const torch::Tensor& bias, double eps) {
  TORCH_CHECK(residual.device().is_cpu() && residual.scalar_type() == torch::kFloat32 && residual.dim() == 2 &&
                  residual.size(0) == io.rows && residual.size(1) == io.cols && residual.is_contiguous(),
              "residual: contiguous (", io.rows, ", ", io.cols, ") float32 on CPU, got ", residual.sizes());
  for (const auto* t : {&weight, &bias})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat32 && t->dim() == 1 &&
                    t->size(0) == io.cols && t->is_contiguous(),
                "norm weight and bias: contiguous (", io.cols, ",) float32 on CPU");
  io.residual = residual.data_ptr<float>();
  io.norm_weight = weight.data_ptr<float>();
  io.norm_bias = bias.data_ptr<float>();
  io.eps = static_cast<float>(eps);
}
