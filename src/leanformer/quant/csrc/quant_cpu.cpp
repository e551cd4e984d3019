// Fused CPU passes for leanformer.quant's batch kernels and its clip search (loaded by leanformer.quant.native).
//
// W8A8: the eager path spends ~5 full passes quantizing activations (amax, amin, multiply, round, cast) and
// 4 rescaling the int32 product of torch._int_mm (cast, two multiplies, bias). Weight-only int4: unpacking
// the codes, subtracting the zero point and scaling are 3 passes over the weight, and the bf16 GEMM result
// takes 2 more (cast, bias). Each function below does the same arithmetic, in the same order and with the
// same rounding (bf16 results rounded after every step, as torch's bf16 ops do), in one sweep, so outputs
// are bit-identical to the eager code in kernels.py / modules.py (tested). Built with -ffp-contract=off so
// the compiler cannot fuse a*b+c into an FMA and change the rounding.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "native_api.h"
#include "rescale_operands.h"
#include "row_quant.h"

#include <atomic>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <string>
#include <vector>

constexpr int64_t kRowGrain = 16;     // rows per parallel task: enough work to pay for a thread hand-off
constexpr int64_t kGroupGrain = 256;  // (row, group) blocks per task in the int4 unpack

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
  std::atomic<bool> finite{true};
  // rows split over torch's intra-op threads (one thread when torch.set_num_threads(1))
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (!quantize_row(xp + m * cols, cols, qp + m * cols, sp + m)) {
        finite = false;
        return;
      }
    }
  });
  return {codes, scale, torch::scalar_tensor(finite.load(), torch::kBool)};
}

// acc (M, N) int32 (or float32 holding the same integers, from oneDNN), row_scale (M, 1), col_scale (N,),
// bias (N,) or empty -> out (M, N) float32: ((float(acc) * row_scale) * col_scale) + bias, each step rounded to
// float32 as the eager ops do. `out` may be `acc` itself when acc is float32 (the in-place variant).
template <typename Acc>
static void rescale_rows_cols(const torch::Tensor& acc, const torch::Tensor& row_scale, const torch::Tensor& col_scale,
                              const torch::Tensor& bias, torch::Tensor& out) {
  TORCH_CHECK(acc.dim() == 2 && acc.is_contiguous(), "acc: contiguous (M, N)");
  const int64_t rows = acc.size(0), cols = acc.size(1);
  const bool has_bias = check_rescale_operands(rows, cols, row_scale, col_scale, bias);
  const Acc* ap = acc.data_ptr<Acc>();
  const float* rp = row_scale.data_ptr<float>();
  const float* cp = col_scale.data_ptr<float>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const Acc* a = ap + m * cols;
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
  });
}

torch::Tensor rescale_int32(const torch::Tensor& acc, const torch::Tensor& row_scale, const torch::Tensor& col_scale,
                            const torch::Tensor& bias) {
  TORCH_CHECK(acc.scalar_type() == torch::kInt32 && acc.dim() == 2, "acc: (M, N) int32");
  auto out = torch::empty(acc.sizes(), acc.options().dtype(torch::kFloat32));
  rescale_rows_cols<int32_t>(acc, row_scale, col_scale, bias, out);
  return out;
}

// in place on a float32 (M, N) product (oneDNN's output): returns acc
torch::Tensor rescale_float_(torch::Tensor& acc, const torch::Tensor& row_scale, const torch::Tensor& col_scale,
                             const torch::Tensor& bias) {
  TORCH_CHECK(acc.scalar_type() == torch::kFloat32 && acc.dim() == 2, "acc: (M, N) float32");
  rescale_rows_cols<float>(acc, row_scale, col_scale, bias, acc);
  return acc;
}

// float <-> bfloat16 bits, round to nearest even: what c10::BFloat16 does for finite values, written as
// plain integer arithmetic so the loops below vectorise (c10's NaN branch keeps GCC from doing so; the
// values here are finite: codes 0..15 and finite fp16-born scales and zero points).
static inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
static inline float from_bf16_bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Group-planar int4 codes (N, G, gs/2) uint8 (packing.group_planar) -> (N, G*gs) weight:
// w = round(round(q - zero) * scale) with zero/scale (N, G) already in the output dtype, or, without a zero
// point, round(round(q - offset) * scale); each rounding (to bf16, or none for float32) matches one eager
// in-place op.
static void dequant_planar_f32(const uint8_t* planar, const float* scale, const float* zero, float offset, float* out,
                               int64_t rows, int64_t groups, int64_t half) {
  at::parallel_for(0, rows * groups, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* p = planar + i * half;
      const float z = zero ? zero[i] : offset, s = scale[i];
      float* lo = out + i * 2 * half;
      float* hi = lo + half;
#pragma omp simd
      for (int64_t j = 0; j < half; ++j) {
        lo[j] = (static_cast<float>(p[j] & 0xF) - z) * s;
        hi[j] = (static_cast<float>(p[j] >> 4) - z) * s;
      }
    }
  });
}

static void dequant_planar_bf16(const uint8_t* planar, const uint16_t* scale, const uint16_t* zero, float offset,
                                uint16_t* out, int64_t rows, int64_t groups, int64_t half) {
  at::parallel_for(0, rows * groups, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* p = planar + i * half;
      const float z = zero ? from_bf16_bits(zero[i]) : offset, s = from_bf16_bits(scale[i]);
      uint16_t* lo = out + i * 2 * half;
      uint16_t* hi = lo + half;
#pragma omp simd
      for (int64_t j = 0; j < half; ++j) {
        lo[j] = to_bf16_bits(from_bf16_bits(to_bf16_bits(static_cast<float>(p[j] & 0xF) - z)) * s);
        hi[j] = to_bf16_bits(from_bf16_bits(to_bf16_bits(static_cast<float>(p[j] >> 4) - z)) * s);
      }
    }
  });
}

torch::Tensor dequant_int4_planar(const torch::Tensor& planar, const torch::Tensor& scale, const torch::Tensor& zero,
                                  double offset) {
  TORCH_CHECK(planar.scalar_type() == torch::kUInt8 && planar.dim() == 3 && planar.is_contiguous(),
              "planar: (N, G, gs/2) uint8");
  const int64_t rows = planar.size(0), groups = planar.size(1), half = planar.size(2);
  const auto dtype = scale.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16, "scale: float32 or bfloat16");
  TORCH_CHECK(scale.numel() == rows * groups && scale.is_contiguous(), "scale: (N, G)");
  const bool has_zero = zero.numel() > 0;
  TORCH_CHECK(!has_zero || (zero.scalar_type() == dtype && zero.numel() == rows * groups && zero.is_contiguous()),
              "zero: (N, G), same dtype as scale");
  auto out = torch::empty({rows, groups * 2 * half}, scale.options());
  if (dtype == torch::kFloat32) {
    dequant_planar_f32(planar.data_ptr<uint8_t>(), scale.data_ptr<float>(), has_zero ? zero.data_ptr<float>() : nullptr,
                       static_cast<float>(offset), out.data_ptr<float>(), rows, groups, half);
  } else {
    dequant_planar_bf16(planar.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(scale.data_ptr()),
                        has_zero ? reinterpret_cast<const uint16_t*>(zero.data_ptr()) : nullptr,
                        static_cast<float>(offset), reinterpret_cast<uint16_t*>(out.data_ptr()), rows, groups, half);
  }
  return out;
}

// Group-planar codebook codes (N, G, gs/2) uint8 (4 bits or fewer: ANT) -> (N, G*gs) weight, w = table[id][q] * s:
// table (T, 16) float32 holding values already rounded to the output dtype, ids (N, G) int32 in [0, T), scale
// (N, G) float32 (likewise rounded); float32 output is the product, bfloat16 output its round to nearest even.
// The eager path's lookup(codebook.to(dtype)) then mul_(scale.to(dtype)), bit for bit, in one pass.
torch::Tensor dequant_codebook_planar(const torch::Tensor& planar, const torch::Tensor& table, const torch::Tensor& ids,
                                      const torch::Tensor& scale, bool bf16_out) {
  TORCH_CHECK(planar.scalar_type() == torch::kUInt8 && planar.dim() == 3 && planar.is_contiguous(),
              "planar: (N, G, gs/2) uint8");
  const int64_t rows = planar.size(0), groups = planar.size(1), half = planar.size(2);
  TORCH_CHECK(table.scalar_type() == torch::kFloat32 && table.dim() == 2 && table.size(0) > 0 &&
                  table.size(1) == 16 && table.is_contiguous(), "table: (T, 16) float32");
  TORCH_CHECK(ids.scalar_type() == torch::kInt32 && ids.numel() == rows * groups && ids.is_contiguous(),
              "ids: (N, G) int32");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.numel() == rows * groups && scale.is_contiguous(),
              "scale: (N, G) float32");
  const int32_t* ip = ids.data_ptr<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)  // an id outside the table would read other memory
    TORCH_CHECK(ip[i] >= 0 && ip[i] < table.size(0), "ids: values in [0, T), found ", ip[i]);
  auto out = torch::empty({rows, groups * 2 * half}, scale.options().dtype(bf16_out ? torch::kBFloat16 : torch::kFloat32));
  const uint8_t* pp = planar.data_ptr<uint8_t>();
  const float* tp = table.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  void* op = out.data_ptr();
  at::parallel_for(0, rows * groups, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* p = pp + i * half;
      const float* row = tp + 16 * static_cast<int64_t>(ip[i]);
      const float s = sp[i];
      if (bf16_out) {
        uint16_t* lo = static_cast<uint16_t*>(op) + i * 2 * half;
        uint16_t* hi = lo + half;
#pragma omp simd
        for (int64_t j = 0; j < half; ++j) {
          lo[j] = to_bf16_bits(row[p[j] & 0xF] * s);
          hi[j] = to_bf16_bits(row[p[j] >> 4] * s);
        }
      } else {
        float* lo = static_cast<float*>(op) + i * 2 * half;
        float* hi = lo + half;
#pragma omp simd
        for (int64_t j = 0; j < half; ++j) {
          lo[j] = row[p[j] & 0xF] * s;
          hi[j] = row[p[j] >> 4] * s;
        }
      }
    }
  });
  return out;
}

// (M, N) bfloat16 GEMM result -> float32 plus bias (N,): float(y) + b, the eager y.float().add_(bias).
torch::Tensor bf16_to_float_add(const torch::Tensor& y, const torch::Tensor& bias) {
  TORCH_CHECK(y.scalar_type() == torch::kBFloat16 && y.dim() == 2 && y.is_contiguous(), "y: (M, N) bfloat16");
  const int64_t rows = y.size(0), cols = y.size(1);
  TORCH_CHECK(bias.scalar_type() == torch::kFloat32 && bias.numel() == cols && bias.is_contiguous(),
              "bias: (N,) float32");
  auto out = torch::empty({rows, cols}, bias.options());
  const auto* yp = reinterpret_cast<const uint16_t*>(y.data_ptr());
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
#pragma omp simd
      for (int64_t n = 0; n < cols; ++n) op[m * cols + n] = from_bf16_bits(yp[m * cols + n]) + bp[n];
    }
  });
  return out;
}

// The clip search's score in rtn.py (_search_block.score), one sweep instead of ~10 elementwise passes:
// w (N, G, gs), scale / zero (N, G, 1), h (1, G, gs) importance or empty -> (N, G, 1) float32
//   sum_j h_j * ((clamp(round_half_even(w_j / s + z), qmin, qmax) - z) * s - w_j)^2.
// Every element is computed with the eager code's operations and roundings; only the order of the final sum
// differs (torch reduces in its own vector order), so the errors agree to float32 rounding of the sum and the
// search may pick a different shrink factor only where two candidates tie to within that rounding.
torch::Tensor group_sq_err(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                           const torch::Tensor& h, double qmin, double qmax) {
  TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.dim() == 3 && w.is_contiguous(), "w: (N, G, gs) float32");
  const int64_t rows = w.size(0), groups = w.size(1), gs = w.size(2);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.numel() == rows * groups && scale.is_contiguous(),
              "scale: (N, G, 1) float32");
  const bool has_zero = zero.numel() > 0, has_h = h.numel() > 0;
  TORCH_CHECK(!has_zero || (zero.scalar_type() == torch::kFloat32 && zero.numel() == rows * groups &&
                            zero.is_contiguous()), "zero: (N, G, 1) float32");
  TORCH_CHECK(!has_h || (h.scalar_type() == torch::kFloat32 && h.numel() == groups * gs && h.is_contiguous()),
              "h: (1, G, gs) float32");
  auto err = torch::empty({rows, groups, 1}, w.options());
  const float* wp = w.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float* zp = has_zero ? zero.data_ptr<float>() : nullptr;
  const float* hp = has_h ? h.data_ptr<float>() : nullptr;
  float* ep = err.data_ptr<float>();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  at::parallel_for(0, rows * groups, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* x = wp + i * gs;
      const float* hg = has_h ? hp + (i % groups) * gs : nullptr;
      const float s = sp[i], z = has_zero ? zp[i] : 0.f;
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < gs; ++j) {
        float q = x[j] / s;
        if (has_zero) q = q + z;
        q = std::nearbyint(q);
        q = q < lo ? lo : (q > hi ? hi : q);
        if (has_zero) q = q - z;
        const float d = q * s - x[j];
        const float e = d * d;
        total += has_h ? e * hg[j] : e;
      }
      ep[i] = total;
    }
  });
  return err;
}

// How many threads at::parallel_for used for `tasks` one-item tasks: the build's check that the kernels really run on
// torch's intra-op threads. at::parallel_for runs serially unless the extension is compiled with -fopenmp (ATen's
// header then uses the OpenMP runtime torch itself loaded, so torch.set_num_threads governs it); the kernels were
// built without it until 2026-12-07 and ran on one core whatever the setting.
int64_t parallel_threads_used(int64_t tasks) {
  TORCH_CHECK(tasks > 0, "tasks must be positive");
  std::vector<std::atomic<bool>> seen(static_cast<size_t>(std::max(at::get_num_threads(), 1)));
  for (auto& flag : seen) flag = false;
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const int64_t tid = at::get_thread_num();
    if (tid >= 0 && tid < static_cast<int64_t>(seen.size())) seen[tid] = true;
  });
  int64_t used = 0;
  for (const auto& flag : seen) used += flag ? 1 : 0;
  return used;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n one-item tasks");
  m.def("dequant_int4_planar", &dequant_int4_planar, "group-planar int4 codes -> scaled weight (fused)");
  m.def("dequant_codebook_planar", &dequant_codebook_planar, "group-planar codebook codes (ANT) -> scaled weight (fused)");
  m.def("bf16_to_float_add", &bf16_to_float_add, "bf16 GEMM result -> float32 + bias (fused)");
  m.def("quantize_rows", &quantize_rows, "per-row symmetric int8 quantization (fused)");
  m.def("rescale_int32", &rescale_int32, "int32 GEMM result -> float32 with row/column scales and bias (fused)");
  m.def("rescale_float_", &rescale_float_, "the same, in place on a float32 product holding integers (fused)");
  m.def("group_sq_err", &group_sq_err, "clip-search score: squared rounding error per group (fused)");
  m.def("amx_int8_ready", &amx_int8_ready, "True when the AMX int8 product can run in this process");
  m.def("amx_int8_status", &amx_int8_status, "why the AMX int8 product can or cannot run");
  m.def("amx_int8_linear", &amx_int8_linear, "int8 x packed int8 on AMX tiles, rescale, bias, GELU, quantize (fused)");
  m.def("vnni_int8_ready", &vnni_int8_ready, "True when the AVX512-VNNI int8 product was built");
  m.def("vnni_int8_status", &vnni_int8_status, "why the AVX512-VNNI int8 product can or cannot run");
  m.def("vnni_int8_linear", &vnni_int8_linear, "int8 x packed int8 on AVX512-VNNI, rescale, bias, GELU, quantize (fused)");
  m.def("amx_int8_linear_codes", &amx_int8_linear_codes, "amx_int8_linear's codes and scales only (no float output)");
  m.def("vnni_int8_linear_codes", &vnni_int8_linear_codes, "vnni_int8_linear's codes and scales only (no float output)");
  m.def("amx_int8_linear_norm", &amx_int8_linear_norm, "amx_int8_linear, then LayerNorm(out + residual) and its codes per row (fused)");
  m.def("vnni_int8_linear_norm", &vnni_int8_linear_norm, "vnni_int8_linear, then LayerNorm(out + residual) and its codes per row (fused)");
  m.def("vnni_w4a8_linear", &vnni_w4a8_linear, "int8 x int4 (unpacked to int8 per call) on AVX512-VNNI, as vnni_int8_linear");
  m.def("amx_gelu_", &amx_gelu_, "the AMX kernel's GELU epilogue, in place (for tests)");
  m.def("amx_w4_linear", &amx_w4_linear, "bf16 x int4 (unpacked in cache) on AMX tiles, float32 sums + bias, GELU, bf16 copy");
  m.def("amx_w4_codebook_linear", &amx_w4_codebook_linear, "the same for 4-bit codebook weights (ANT), one table row per column and group");
  m.def("amx_w4_ready", &amx_w4_ready, "True when the AMX int4 kernel can run in this process");
  m.def("short_attention", &short_attention, "softmax(q k^T * scale + mask) v per head, for short sequences");
  m.def("residual_layer_norm", &residual_layer_norm, "LayerNorm(x + residual), quantize the result per row (fused)");
  m.def("unpack_w4a8", &unpack_w4a8, "int4 group codes -> the AMX int8 weight layout on a per-channel int8 grid");
  m.def("amx_w4a8_linear", &amx_w4a8_linear, "int8 x int4 (unpacked to int8 per call) on AMX tiles, as amx_int8_linear");
  m.def("ant_alpha_events", &ant_alpha_events, "ANT search: thresholds passed and crossing histograms, one sweep");
  m.def("int8_bert_encoder", &int8_bert_encoder, "W8A8 BERT encoder layers, one after another (run_int8_layer's calls)");
  m.def("embedding_sum", &embedding_sum, "the sum of one dequantized row of each 8-bit table per token (fused)");
  m.def("embedding_rows", &embedding_rows, "rows of an 8-bit embedding table, dequantized as they are gathered");
}
