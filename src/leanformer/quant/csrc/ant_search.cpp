// The event pass of ANT's exact all-alpha search (leanformer.quant.ant._sse_all_alphas) in one sweep over the
// elements. The eager version builds ~40 temporaries of the tensor's size per numeric type (a threshold count at
// both ends of the alpha range, then every threshold crossed inside it expanded, looked up and binned); this
// loop does the same arithmetic per element with nothing in memory but the two histograms.
//
// Bit-identical to the eager pass: the same float32 comparisons (the eager code compares a float32 tensor with
// a Python float, which torch rounds to float32), the same float64 crossing and histogram terms, added to each
// bucket in the same order (elements in order, thresholds ascending, as index_add_ does), and no contraction of
// a*b - c*d into a fused multiply-add (the build passes -ffp-contract=off).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {
// Largest integer c with c * t <= r, as ant._crossing computes it
inline double crossing(double r, double t) {
  double c = std::floor(r / t);
  c -= (c * t > r) ? 1.0 : 0.0;
  c += ((c + 1.0) * t <= r) ? 1.0 : 0.0;
  return c;
}

// Thresholds of one side (positive or negative values) passed at alpha a: r >= float32(a * t_j)
inline int64_t passed(float r, const double* t, int64_t count, double a) {
  int64_t n = 0;
  for (int64_t j = 0; j < count; ++j) n += r >= static_cast<float>(a * t[j]);
  return n;
}
}  // namespace

// r (E,) float32 = 100 * max(grid) * |w| / absmax of the row, u (E,) float64 |w|, neg (E,) bool, per side
// thresholds t (J,) and magnitudes v (J + 1,) float64, gs elements per row, alphas [lo, hi) ->
//   {b_hi (E,) int64: thresholds passed at hi - 1, hist1 / hist2 (R * (hi - lo + 1),) float64: per row and last
//    alpha bucket, the sums of u * (v_{j+1} - v_j) and v_{j+1}^2 - v_j^2 over the thresholds crossed inside}
std::vector<torch::Tensor> ant_alpha_events(const torch::Tensor& r, const torch::Tensor& u, const torch::Tensor& neg,
                                            const torch::Tensor& t_pos, const torch::Tensor& v_pos,
                                            const torch::Tensor& t_neg, const torch::Tensor& v_neg, int64_t gs,
                                            int64_t lo, int64_t hi) {
  TORCH_CHECK(r.scalar_type() == torch::kFloat32 && r.dim() == 1 && r.is_contiguous(), "r: (E,) float32");
  const int64_t elems = r.numel();
  TORCH_CHECK(u.scalar_type() == torch::kFloat64 && u.numel() == elems && u.is_contiguous(), "u: (E,) float64");
  TORCH_CHECK(neg.scalar_type() == torch::kBool && neg.numel() == elems && neg.is_contiguous(), "neg: (E,) bool");
  TORCH_CHECK(gs > 0 && elems % gs == 0, "gs must divide the element count");
  TORCH_CHECK(0 < lo && lo < hi, "alphas: 0 < lo < hi");
  const torch::Tensor* tables[4] = {&t_pos, &v_pos, &t_neg, &v_neg};
  for (const auto* t : tables)
    TORCH_CHECK(t->scalar_type() == torch::kFloat64 && t->dim() == 1 && t->is_contiguous(), "tables: float64 (J,)");
  TORCH_CHECK(v_pos.numel() == t_pos.numel() + 1 && v_neg.numel() == t_neg.numel() + 1,
              "each side: J thresholds between J + 1 magnitudes");
  const int64_t rows = elems / gs, steps = hi - lo;
  auto b_hi = torch::empty({elems}, r.options().dtype(torch::kInt64));
  auto hist1 = torch::zeros({rows * (steps + 1)}, u.options());
  auto hist2 = torch::zeros({rows * (steps + 1)}, u.options());
  const float* rp = r.data_ptr<float>();
  const double* up = u.data_ptr<double>();
  const bool* np = neg.data_ptr<bool>();
  const double* side_t[2] = {t_pos.data_ptr<double>(), t_neg.data_ptr<double>()};
  const double* side_v[2] = {v_pos.data_ptr<double>(), v_neg.data_ptr<double>()};
  const int64_t side_j[2] = {t_pos.numel(), t_neg.numel()};
  int64_t* bp = b_hi.data_ptr<int64_t>();
  double* h1 = hist1.data_ptr<double>();
  double* h2 = hist2.data_ptr<double>();
  const double a_hi = static_cast<double>(hi - 1), a_lo = static_cast<double>(lo);
  // rows are independent (each owns its histogram buckets), so threads split them
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      double* row_h1 = h1 + row * (steps + 1);
      double* row_h2 = h2 + row * (steps + 1);
      for (int64_t e = row * gs; e < (row + 1) * gs; ++e) {
        const int side = np[e] ? 1 : 0;
        const double* t = side_t[side];
        const double* v = side_v[side];
        const int64_t first = passed(rp[e], t, side_j[side], a_hi), last = passed(rp[e], t, side_j[side], a_lo);
        bp[e] = first;
        for (int64_t j = first; j < last; ++j) {  // thresholds crossed inside the range
          const double c = crossing(static_cast<double>(rp[e]), t[j]);
          const int64_t bucket =
              static_cast<int64_t>(std::min(std::max(c - static_cast<double>(lo - 1), 0.0), static_cast<double>(steps)));
          const double v_lo = v[j], v_up = v[j + 1];
          row_h1[bucket] += up[e] * (v_up - v_lo);
          row_h2[bucket] += v_up * v_up - v_lo * v_lo;
        }
      }
    }
  });
  return {b_hi, hist1, hist2};
}
