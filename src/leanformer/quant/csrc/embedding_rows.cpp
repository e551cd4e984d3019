// Rows of an 8-bit quantized embedding table, dequantized as they are gathered (loaded by
// leanformer.quant.native; the Python side is modules.QuantizedEmbedding.forward), and the sum of lookups in
// several such tables (embedding_sum; the Python side is fast_embeddings.FastBertEmbeddings).
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
#include <vector>

#include "native_api.h"

namespace {
// one row: dst[k] = (float(src[k]) - zero[g]) * scale[g] (without zero points: float(src[k]) * scale[g]); with `add`,
// dst[k] = dst[k] + that, rounded once more (the build has -ffp-contract=off: no fused multiply-add changes the bits)
template <bool add, typename Code>
void dequant_row(const Code* src, const float* scale, const float* zero, int64_t dim, int64_t groups, float* dst) {
  const int64_t group = dim / groups;
  for (int64_t g = 0; g < groups; ++g) {
    const float sg = scale[g], zg = zero ? zero[g] : 0.f;
    const int64_t k0 = g * group;
    if (zero) {
#pragma omp simd
      for (int64_t k = k0; k < k0 + group; ++k) {
        const float v = (static_cast<float>(src[k]) - zg) * sg;
        dst[k] = add ? dst[k] + v : v;
      }
    } else {
#pragma omp simd
      for (int64_t k = k0; k < k0 + group; ++k) {
        const float v = static_cast<float>(src[k]) * sg;
        dst[k] = add ? dst[k] + v : v;
      }
    }
  }
}

// An 8-bit table's operands, checked: codes (V, D) int8 or uint8, scale (V, G) float32, zero (V, G) or empty
struct Table {
  const void* codes;
  bool is_signed;
  const float *scale, *zero;
  int64_t vocab, dim, groups;

  // dst = row id (add: dst + row id)
  template <bool add = false>
  void row(int64_t id, float* dst) const {
    const float* s = scale + id * groups;
    const float* z = zero ? zero + id * groups : nullptr;
    if (is_signed) dequant_row<add>(static_cast<const int8_t*>(codes) + id * dim, s, z, dim, groups, dst);
    else dequant_row<add>(static_cast<const uint8_t*>(codes) + id * dim, s, z, dim, groups, dst);
  }
};

Table check_table(const torch::Tensor& codes, const torch::Tensor& scale, const torch::Tensor& zero) {
  TORCH_CHECK(codes.device().is_cpu() && codes.dim() == 2 && codes.is_contiguous() &&
                  (codes.scalar_type() == torch::kInt8 || codes.scalar_type() == torch::kUInt8),
              "codes: contiguous (V, D) int8 or uint8 on CPU");
  const int64_t vocab = codes.size(0), dim = codes.size(1);
  TORCH_CHECK(scale.device().is_cpu() && scale.scalar_type() == torch::kFloat32 && scale.dim() == 2 &&
                  scale.size(0) == vocab && scale.size(1) > 0 && dim % scale.size(1) == 0 && scale.is_contiguous(),
              "scale: contiguous (V, G) float32 with G dividing D");
  const bool has_zero = zero.numel() > 0;
  TORCH_CHECK(!has_zero || (zero.device().is_cpu() && zero.scalar_type() == torch::kFloat32 &&
                            zero.sizes() == scale.sizes() && zero.is_contiguous()),
              "zero: empty or contiguous float32 shaped like scale");
  return {codes.data_ptr(), codes.scalar_type() == torch::kInt8, scale.data_ptr<float>(),
          has_zero ? zero.data_ptr<float>() : nullptr, vocab, dim, scale.size(1)};
}

const int64_t* check_ids(const torch::Tensor& ids, int64_t vocab) {
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == torch::kInt64 && ids.dim() == 1 && ids.is_contiguous(),
              "ids: contiguous (T,) int64 on CPU");
  const int64_t* ip = ids.data_ptr<int64_t>();
  for (int64_t t = 0; t < ids.size(0); ++t)
    TORCH_CHECK(ip[t] >= 0 && ip[t] < vocab, "embedding_rows: id ", ip[t], " is out of range for ", vocab, " rows");
  return ip;
}
}  // namespace

// codes (V, D) int8 or uint8, scale (V, G) float32, zero (V, G) float32 or empty, ids (T,) int64 -> (T, D) float32
torch::Tensor embedding_rows(const torch::Tensor& codes, const torch::Tensor& scale, const torch::Tensor& zero,
                             const torch::Tensor& ids) {
  const Table table = check_table(codes, scale, zero);
  const int64_t* ip = check_ids(ids, table.vocab);
  auto out = torch::empty({ids.size(0), table.dim}, scale.options());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, ids.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) table.row(ip[t], op + t * table.dim);
  });
  return out;
}

// The sum of one row of each table per token, each row dequantized as embedding_rows does: out[t] =
// ((row_0(ids_0[t]) + row_1(ids_1[t])) + row_2(ids_2[t])) ..., each sum rounded to float32, in the tables' order.
// That is eager code's arithmetic for a sum of embedding lookups (BertEmbeddings: word + token type, then +
// position), so the result is bit-identical, with one pass over the output instead of one per lookup and sum.
// codes, scale, zero: one per table, as embedding_rows takes them (all of the same D); ids: (T,) int64 per table
torch::Tensor embedding_sum(const std::vector<torch::Tensor>& codes, const std::vector<torch::Tensor>& scale,
                            const std::vector<torch::Tensor>& zero, const std::vector<torch::Tensor>& ids) {
  const size_t n = codes.size();
  TORCH_CHECK(n > 0 && scale.size() == n && zero.size() == n && ids.size() == n,
              "embedding_sum: one codes, scale, zero and ids tensor per table, got ", codes.size(), ", ", scale.size(),
              ", ", zero.size(), " and ", ids.size());
  std::vector<Table> tables;
  std::vector<const int64_t*> idp;
  for (size_t i = 0; i < n; ++i) {
    tables.push_back(check_table(codes[i], scale[i], zero[i]));
    idp.push_back(check_ids(ids[i], tables[i].vocab));
    TORCH_CHECK(tables[i].dim == tables[0].dim && ids[i].size(0) == ids[0].size(0),
                "embedding_sum: the tables' D and the ids' T must agree");
  }
  const int64_t tokens = ids[0].size(0), dim = tables[0].dim;
  auto out = torch::empty({tokens, dim}, scale[0].options());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* dst = op + t * dim;  // one row, in L1 while each table's row is added to it
      tables[0].row(idp[0][t], dst);
      for (size_t i = 1; i < n; ++i) tables[i].row<true>(idp[i][t], dst);
    }
  });
  return out;
}
