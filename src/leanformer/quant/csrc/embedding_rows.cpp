// Rows of an 8-bit quantized embedding table, dequantized as they are gathered (loaded by
// leanformer.quant.native; the Python side is modules.QuantizedEmbedding.forward).
//
// Why: the eager lookup runs five passes over the (tokens, dim) result - gather the int8 rows, cast them,
// gather and broadcast the scales (and zero points), subtract, multiply - about 0.4 ms per table for MiniLM at
// batch 32, three tables per forward. Here each row is read once and written once.
//
// Arithmetic: out[t, k] = (float(q[id, k]) - zero[id, g]) * scale[id, g] with g = k / group, each step rounded to
// float32, the eager path's operations in its order (without a zero point: float(q) * scale), so results are
// bit-identical (tested with torch.equal).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdint>

#include "native_api.h"

namespace {
template <typename Code>
void gather_rows(const Code* q, const float* scale, const float* zero, const int64_t* ids, int64_t tokens,
                 int64_t dim, int64_t groups, float* out) {
  const int64_t group = dim / groups;
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = ids[t];
      const Code* src = q + row * dim;
      const float* s = scale + row * groups;
      float* dst = out + t * dim;
      for (int64_t g = 0; g < groups; ++g) {
        const float sg = s[g], zg = zero ? zero[row * groups + g] : 0.f;
        const int64_t k0 = g * group;
        if (zero) {
#pragma omp simd
          for (int64_t k = k0; k < k0 + group; ++k) dst[k] = (static_cast<float>(src[k]) - zg) * sg;
        } else {
#pragma omp simd
          for (int64_t k = k0; k < k0 + group; ++k) dst[k] = static_cast<float>(src[k]) * sg;
        }
      }
    }
  });
}
}  // namespace

// codes (V, D) int8 or uint8, scale (V, G) float32, zero (V, G) float32 or empty, ids (T,) int64 -> (T, D) float32
torch::Tensor embedding_rows(const torch::Tensor& codes, const torch::Tensor& scale, const torch::Tensor& zero,
                             const torch::Tensor& ids) {
  TORCH_CHECK(codes.device().is_cpu() && codes.dim() == 2 && codes.is_contiguous() &&
                  (codes.scalar_type() == torch::kInt8 || codes.scalar_type() == torch::kUInt8),
              "codes: contiguous (V, D) int8 or uint8 on CPU");
  const int64_t vocab = codes.size(0), dim = codes.size(1);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.dim() == 2 && scale.size(0) == vocab &&
                  scale.size(1) > 0 && dim % scale.size(1) == 0 && scale.is_contiguous(),
              "scale: contiguous (V, G) float32 with G dividing D");
  const int64_t groups = scale.size(1);
  const bool has_zero = zero.numel() > 0;
  TORCH_CHECK(!has_zero || (zero.scalar_type() == torch::kFloat32 && zero.sizes() == scale.sizes() &&
                            zero.is_contiguous()),
              "zero: empty or contiguous float32 shaped like scale");
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 && ids.dim() == 1 && ids.is_contiguous(), "ids: contiguous (T,) int64");
  const int64_t tokens = ids.size(0);
  const int64_t* ip = ids.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(ip[t] >= 0 && ip[t] < vocab, "embedding_rows: id ", ip[t], " is out of range for ", vocab, " rows");
  auto out = torch::empty({tokens, dim}, scale.options());
  const float* zp = has_zero ? zero.data_ptr<float>() : nullptr;
  if (codes.scalar_type() == torch::kInt8)
    gather_rows(codes.data_ptr<int8_t>(), scale.data_ptr<float>(), zp, ip, tokens, dim, groups, out.data_ptr<float>());
  else
    gather_rows(codes.data_ptr<uint8_t>(), scale.data_ptr<float>(), zp, ip, tokens, dim, groups, out.data_ptr<float>());
  return out;
}
