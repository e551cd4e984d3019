// A stack of W8A8 BERT encoder layers in one call (the Python side is leanformer.quant.int8_encoder): the calls
// int8_layer.run_int8_layer makes for each layer, made here in C++ one layer after another.
//
// Why: with the products near the VNNI kernel's peak, what is left of a batch-32 MiniLM forward outside them is
// mostly Python: the per-layer plan checks, the wrappers around each op and the tensor views between them. In a
// 1-thread forward on the Zen 4 VM that was ~0.35 ms per layer, measured inside the model (where the products have
// just pushed the interpreter's objects out of cache; the same checks take ~15 us warm), ~5% of the forward, and a
// larger share at 2 threads, where the products run twice as fast and the Python does not.
//
// What it computes is what run_int8_layer computes, bit for bit: the same kernels with the same operands in the
// same order. Per layer, with x (M, H) the layer's input and (xq, xs) its per-token codes:
//   qkv = int8_linear(xq, xs, stacked q/k/v weight)               (M, 3H), viewed as (B, S, 3, heads, D)
//   ctx = short_attention(q, k, v, mask, scaling)                 (B, S, heads, D) = (M, H)
//   a   = int8_linear_norm(quantize_rows(ctx), self-output, + x)  LayerNorm(ctx W^T + b + x), with its codes
//   f   = int8_linear_codes(codes(a), intermediate, GELU)         only the codes of GELU(a W^T + b)
//   y   = int8_linear_norm(f, output, + a)                        the next layer's x, with its codes
// Where a step meets a NaN or an inf (a kernel reports a row it could not quantize), the Python path hands that
// tensor to eager code whose behaviour the kernels do not copy; here the call stops and says so, and the caller
// runs the layers' own path from the start (the same result, since nothing was written to its tensors).
#include <torch/extension.h>

#include <cstdint>
#include <vector>

#include "native_api.h"

namespace {
constexpr int64_t kPerLayer = 16;  // weight tensors per layer (the order is int8_bert_encoder's)

// The fused int8 kernels of this CPU: AMX tiles or AVX512-VNNI, which take the same operands and give the same bits
struct Int8Kernels {
  bool amx;
  std::vector<torch::Tensor> linear(const torch::Tensor& xq, const torch::Tensor& xs, const torch::Tensor* w) const {
    return amx ? amx_int8_linear(xq, xs, w[0], w[1], w[2], 0, false) : vnni_int8_linear(xq, xs, w[0], w[1], w[2], 0, false);
  }
  std::vector<torch::Tensor> gelu_codes(const torch::Tensor& xq, const torch::Tensor& xs, const torch::Tensor* w) const {
    return amx ? amx_int8_linear_codes(xq, xs, w[0], w[1], w[2], 1) : vnni_int8_linear_codes(xq, xs, w[0], w[1], w[2], 1);
  }
  // w: packed, scale, bias, norm weight, norm bias
  std::vector<torch::Tensor> norm(const torch::Tensor& xq, const torch::Tensor& xs, const torch::Tensor* w,
                                  const torch::Tensor& residual, double eps) const {
    return amx ? amx_int8_linear_norm(xq, xs, w[0], w[1], w[2], residual, w[3], w[4], eps)
               : vnni_int8_linear_norm(xq, xs, w[0], w[1], w[2], residual, w[3], w[4], eps);
  }
};

bool finite(const torch::Tensor& flag) { return flag.item<bool>(); }
}  // namespace

// hidden (B, S, H) float32 contiguous on CPU; mask: empty or short_attention's 4-D mask; weights: kPerLayer
// tensors per layer, in this order:
//   stacked q/k/v: packed (3H/16, H/64, 16, 64) int8, column scales (3H,), bias (3H,) or empty;
//   self-output: packed, scales, bias, LayerNorm weight, LayerNorm bias;
//   intermediate: packed, scales, bias;
//   output: packed, scales, bias, LayerNorm weight, LayerNorm bias;
// eps: the two LayerNorms' eps per layer; heads: attention heads (H = heads * D); scaling: the attention's score
// scale; amx: run the AMX kernels (else AVX512-VNNI).
// -> {out (B, S, H) float32, done (bool)}: done is false, and out empty, where a step met a NaN or an inf.
std::vector<torch::Tensor> int8_bert_encoder(const torch::Tensor& hidden, const torch::Tensor& mask,
                                             const std::vector<torch::Tensor>& weights, const std::vector<double>& eps,
                                             int64_t heads, double scaling, bool amx) {
  TORCH_CHECK(hidden.device().is_cpu() && hidden.scalar_type() == torch::kFloat32 && hidden.dim() == 3 &&
                  hidden.is_contiguous(),
              "int8_bert_encoder: hidden must be a contiguous (B, S, H) float32 CPU tensor, got ", hidden.sizes(), " ",
              hidden.scalar_type());
  const int64_t layers = static_cast<int64_t>(weights.size()) / kPerLayer;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == layers * kPerLayer && layers > 0,
              "int8_bert_encoder: weights must hold ", kPerLayer, " tensors per layer, got ", weights.size());
  TORCH_CHECK(static_cast<int64_t>(eps.size()) == 2 * layers, "int8_bert_encoder: eps must hold 2 values per layer");
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2), M = B * S;
  TORCH_CHECK(heads > 0 && H % heads == 0, "int8_bert_encoder: ", heads, " heads do not divide the hidden size ", H);
  const Int8Kernels kernels{amx};
  const auto stopped = [&] {
    return std::vector<torch::Tensor>{torch::empty({0}, hidden.options()), torch::scalar_tensor(false, torch::kBool)};
  };

  torch::Tensor x = hidden.view({M, H});
  auto in = quantize_rows(x);  // {codes (M, H), scale (M, 1), finite}
  if (!finite(in[2])) return stopped();
  torch::Tensor xq = in[0], xs = in[1];
  for (int64_t l = 0; l < layers; ++l) {
    const torch::Tensor* w = weights.data() + l * kPerLayer;
    const torch::Tensor qkv = kernels.linear(xq, xs, w)[0].view({B, S, 3, heads, H / heads});  // (B, S, 3, heads, D)
    // (B, heads, S, D) views with unit stride in D, as run_int8_layer hands them over
    const torch::Tensor context = short_attention(qkv.select(2, 0).transpose(1, 2), qkv.select(2, 1).transpose(1, 2),
                                                  qkv.select(2, 2).transpose(1, 2), mask, scaling);  // (B, S, heads, D)
    auto cq = quantize_rows(context.view({M, H}));
    if (!finite(cq[2])) return stopped();
    auto attended = kernels.norm(cq[0], cq[1], w + 3, x, eps[2 * l]);  // {out, codes, scale, finite}
    if (!finite(attended[3])) return stopped();
    auto ffn = kernels.gelu_codes(attended[1], attended[2], w + 8);  // {(0, N), codes, scale, finite}
    if (!finite(ffn[3])) return stopped();
    auto y = kernels.norm(ffn[1], ffn[2], w + 11, attended[0], eps[2 * l + 1]);
    if (!finite(y[3])) return stopped();
    x = y[0];
    xq = y[1];
    xs = y[2];
  }
  return {x.view({B, S, H}), torch::scalar_tensor(true, torch::kBool)};
}
