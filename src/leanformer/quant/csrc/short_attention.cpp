// Inference attention for short sequences (loaded by leanformer.quant.native; the Python side is
// leanformer.quant.attention): softmax(q k^T * scale + mask) v for every (batch, head), one task per pair.
//
// Why: at BERT-sized sequences (tens of tokens) the work per head is tiny (18 x 18 x 32 for MiniLM), and
// PyTorch's CPU flash-attention kernel spends most of its time on per-head setup. Here each head's keys are
// transposed into an L1 buffer, blocks of up to 8 query rows get their scores, softmax and weighted sum of values
// with 8 independent FMA chains, and the output is written straight into the (B, Sq, H, D) layout the model
// reshapes to (B, Sq, H * D), with no transposed copies. Keys after a row block's last attended key (the padding
// of a padded batch) are left out of its scores and sums.
//
// Arithmetic: float32 throughout. Scores are float32 dot products summed over D in order (torch's order may
// differ, so results agree to within a few ulps); the softmax subtracts the row maximum and the output is
// (sum_j e_j v_j) / sum_j e_j, as in torch's flash kernel. exp is exp_nonpositive (gelu_avx512.h, relative
// error ~2e-8); scores more than 60 below the row maximum get weight 0 (their true weight is < e^-60 ~ 1e-26 of
// the largest), masked keys exactly 0. A row whose keys are all masked gives zeros (as torch's SDPA does on
// CPU); a NaN or +inf score gives a NaN row. Without AVX512 the same steps run as plain loops.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gelu_avx512.h"
#include "row_quant.h"  // tail_mask

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define LEANFORMER_SA_AVX512 1
#endif

namespace {
constexpr int kRowBlock = 8;      // query rows per block: 8 independent FMA chains cover the FMA latency
constexpr float kCutoff = -60.f;  // scores this far below the row maximum get weight 0
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct View4 {  // a float tensor (B, H, S, D) with unit stride in D
  const float* p;
  int64_t sb, sh, ss;
  const float* row(int64_t b, int64_t h, int64_t s) const { return p + b * sb + h * sh + s * ss; }
};

View4 view4(const torch::Tensor& t) { return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// mask (B|1, H|1, Sq|1, Sk) with unit stride in Sk, bool (true = attend) or additive float; size-1 dims broadcast
struct MaskView {
  int kind = 0;  // 0 none, 1 bool, 2 float
  const bool* pb = nullptr;
  const float* pf = nullptr;
  int64_t sb = 0, sh = 0, sq = 0;
};

// One block of R query rows. s: (R, skp) scores, then weights; keys past sk hold -inf, then 0.
template <int R>
struct RowBlock {
  const float* q[R];
  float* out[R];
  int64_t mask_offset[R];
  float total[R];

  // s[r, j] = scale * (q_r . k_j) + mask[r, j] (masked keys and padding: -inf); kt: (D, skp) transposed keys
  void scores(const float* kt, int64_t d, int64_t sk, int64_t skp, float scale, const MaskView& mask, float* s) const {
#ifdef LEANFORMER_SA_AVX512
    int64_t j0 = 0;
    for (; sk - j0 > 8; j0 += 16) {
      __m512 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
      for (int64_t c = 0; c < d; ++c) {
        const __m512 kc = _mm512_loadu_ps(kt + c * skp + j0);
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c]), kc, acc[r]);
      }
      const __mmask16 live = tail_mask(sk - j0);
      for (int r = 0; r < R; ++r) {
        __m512 v = _mm512_mul_ps(acc[r], _mm512_set1_ps(scale));
        __mmask16 keep = live;
        if (mask.kind == 1) {
          const __m128i m8 = _mm_maskz_loadu_epi8(live, mask.pb + mask_offset[r] + j0);
          keep = _mm_test_epi8_mask(m8, m8) & live;
        } else if (mask.kind == 2) {
          v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, mask.pf + mask_offset[r] + j0));
        }
        _mm512_storeu_ps(s + r * skp + j0, _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), keep, v));
      }
    }
    if (j0 < sk) tail_scores(kt, d, sk, skp, scale, mask, s, j0);
#else
    for (int r = 0; r < R; ++r) {
      float* sr = s + r * skp;
      for (int64_t j = 0; j < sk; ++j) {
        float acc = 0.f;
        for (int64_t c = 0; c < d; ++c) acc += q[r][c] * kt[c * skp + j];
        float v = acc * scale;
        if (mask.kind == 1 && !mask.pb[mask_offset[r] + j]) v = kNegInf;
        if (mask.kind == 2) v += mask.pf[mask_offset[r] + j];
        sr[j] = v;
      }
      for (int64_t j = sk; j < skp; ++j) sr[j] = kNegInf;
    }
#endif
  }

#ifdef LEANFORMER_SA_AVX512
  // scores() for the last 1 to 8 keys, from key j0 (a multiple of 16), in 8-float registers: the same products in
  // the same order, so the same bits, at half the cost of a 16-float block on Zen 4 (which splits 512-bit
  // operations in two). MiniLM's batches are 18 tokens or fewer: 16 keys, then this. Lanes j0 + 8 .. j0 + 15 of
  // the row get -inf, as padding does.
  void tail_scores(const float* kt, int64_t d, int64_t sk, int64_t skp, float scale, const MaskView& mask, float* s,
                   int64_t j0) const {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m256 kc = _mm256_loadu_ps(kt + c * skp + j0);
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(q[r][c]), kc, acc[r]);
    }
    const __mmask8 live = static_cast<__mmask8>(tail_mask(sk - j0));
    for (int r = 0; r < R; ++r) {
      __m256 v = _mm256_mul_ps(acc[r], _mm256_set1_ps(scale));
      __mmask8 keep = live;
      if (mask.kind == 1) {
        const __m128i m8 = _mm_maskz_loadu_epi8(live, mask.pb + mask_offset[r] + j0);
        keep = static_cast<__mmask8>(_mm_test_epi8_mask(m8, m8)) & live;
      } else if (mask.kind == 2) {
        v = _mm256_add_ps(v, _mm256_maskz_loadu_ps(live, mask.pf + mask_offset[r] + j0));
      }
      _mm256_storeu_ps(s + r * skp + j0, _mm256_mask_mov_ps(_mm256_set1_ps(kNegInf), keep, v));
      _mm256_storeu_ps(s + r * skp + j0 + 8, _mm256_set1_ps(kNegInf));
    }
  }
#endif

  // s[r] -> e_j = exp(s_j - max) in place; total[r] = sum_j e_j (0 if every key is masked, NaN for a NaN or
  // +inf score)
  void weights(float* s, int64_t skp, int64_t sk) {
    const int64_t padded = (sk + 15) / 16 * 16;  // scores past sk in the last vector hold -inf
    for (int r = 0; r < R; ++r) total[r] = row_weights(s + r * skp, padded);
  }

  // out[r] = (sum_j e[r, j] v_j) / total[r]
  void output(const float* e, int64_t skp, const View4& v, int64_t b, int64_t h, int64_t sk, int64_t d) const {
    float inv[R];
    for (int r = 0; r < R; ++r) inv[r] = total[r] > 0.f ? 1.f / total[r] : 0.f;
#ifdef LEANFORMER_SA_AVX512
    for (int64_t c0 = 0; c0 < d; c0 += 16) {
      const __mmask16 live = tail_mask(d - c0);
      __m512 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
      for (int64_t j = 0; j < sk; ++j) {
        const __m512 vj = _mm512_maskz_loadu_ps(live, v.row(b, h, j) + c0);
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(e[r * skp + j]), vj, acc[r]);
      }
      for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(out[r] + c0, live, _mm512_mul_ps(acc[r], _mm512_set1_ps(inv[r])));
    }
#else
    for (int r = 0; r < R; ++r) {
      for (int64_t c = 0; c < d; ++c) {
        float acc = 0.f;
        for (int64_t j = 0; j < sk; ++j) acc += e[r * skp + j] * v.row(b, h, j)[c];
        out[r][c] = acc * inv[r];
      }
    }
#endif
    for (int r = 0; r < R; ++r)
      if (!(total[r] > 0.f))  // every key masked (0) or a NaN row
        for (int64_t c = 0; c < d; ++c) out[r][c] = total[r];
  }

  static float row_weights(float* s, int64_t skp) {
#ifdef LEANFORMER_SA_AVX512
    __m512 m = _mm512_set1_ps(kNegInf);
    __mmask16 nan = 0;
    for (int64_t j0 = 0; j0 < skp; j0 += 16) {
      const __m512 x = _mm512_loadu_ps(s + j0);
      nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      m = _mm512_max_ps(m, x);
    }
    const float mx = _mm512_reduce_max_ps(m);
#else
    float mx = kNegInf;
    bool nan = false;
    for (int64_t j = 0; j < skp; ++j) {
      nan |= std::isnan(s[j]);
      mx = s[j] > mx ? s[j] : mx;
    }
#endif
    if (nan || mx == -kNegInf) return std::numeric_limits<float>::quiet_NaN();
    if (mx == kNegInf) return 0.f;
#ifdef LEANFORMER_SA_AVX512
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 t = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < skp; j0 += 16) {
      const __m512 u = _mm512_sub_ps(_mm512_loadu_ps(s + j0), vm);  // <= 0; -inf for masked keys and padding
      const __mmask16 kept = _mm512_cmp_ps_mask(u, _mm512_set1_ps(kCutoff), _CMP_GE_OQ);
      const __m512 e = _mm512_maskz_mov_ps(kept, exp_nonpositive(u));
      _mm512_storeu_ps(s + j0, e);
      t = _mm512_add_ps(t, e);
    }
    return _mm512_reduce_add_ps(t);
#else
    float t = 0.f;
    for (int64_t j = 0; j < skp; ++j) {
      const float u = s[j] - mx;
      s[j] = u >= kCutoff ? std::exp(u) : 0.f;
      t += s[j];
    }
    return t;
#endif
  }
};

struct Problem {
  View4 q, k, v;
  MaskView mask;
  int64_t H, Sq, Sk, D, skp;
  float scale;
  float* out;  // (B, Sq, H, D)
};

// 1 + the index of the last key this mask row attends to (0 if none; all keys without a mask)
int64_t attended_keys(const MaskView& mask, int64_t offset, int64_t sk) {
  if (mask.kind == 1) {
    while (sk > 0 && !mask.pb[offset + sk - 1]) --sk;
  } else if (mask.kind == 2) {
    while (sk > 0 && mask.pf[offset + sk - 1] == kNegInf) --sk;
  }
  return sk;
}

template <int R>
void run_block(const Problem& p, int64_t b, int64_t h, int64_t i0, const float* kt, float* s) {
  RowBlock<R> blk;
  for (int r = 0; r < R; ++r) {
    const int64_t i = i0 + r;
    blk.q[r] = p.q.row(b, h, i);
    blk.out[r] = p.out + ((b * p.Sq + i) * p.H + h) * p.D;
    blk.mask_offset[r] = b * p.mask.sb + h * p.mask.sh + i * p.mask.sq;
  }
  // keys after the block's last attended one have weight 0 in every row: leave them out (exactly the same
  // sums; padded batches attend to a fraction of the padded length)
  int64_t sk = 0;
  for (int r = 0; r < R; ++r) sk = std::max(sk, attended_keys(p.mask, blk.mask_offset[r], p.Sk));
  blk.scores(kt, p.D, sk, p.skp, p.scale, p.mask, s);
  blk.weights(s, p.skp, sk);
  blk.output(s, p.skp, p.v, b, h, sk, p.D);
}

#ifdef LEANFORMER_SA_AVX512
// x[i] (16 rows of 16 floats) -> x[c] = column c, in registers: pairs of rows interleaved within 128-bit lanes,
// then pairs of pairs, then the 128-bit lanes exchanged twice (64 shuffles). After the second step, u[4g + m]
// lane L holds rows 4g..4g+3 of column 4L + m; the lane exchanges gather each column's four lanes.
inline void transpose16(__m512 x[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    u[4 * k] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
    u[4 * k + 1] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
    u[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
    u[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 even01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88);
    const __m512 odd01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
    const __m512 even23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
    const __m512 odd23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
    x[m] = _mm512_shuffle_f32x4(even01, even23, 0x88);
    x[8 + m] = _mm512_shuffle_f32x4(even01, even23, 0xDD);
    x[4 + m] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
    x[12 + m] = _mm512_shuffle_f32x4(odd01, odd23, 0xDD);
  }
}
#endif

// kt (D, skp) = head (b, h)'s keys transposed: key j in column j (columns past Sk stay 0)
void transpose_keys(const Problem& p, int64_t b, int64_t h, float* kt) {
  const float* k0 = p.k.row(b, h, 0);
#ifdef LEANFORMER_SA_AVX512
  // 16 x 16 tiles transposed in registers. Zen 4's gathers made the earlier one-gather-per-feature transpose a
  // third of the whole kernel's time in MiniLM (0.32 of 0.90 ms per layer, measured by leaving it out).
  for (int64_t j0 = 0; j0 < p.skp; j0 += 16) {
    for (int64_t c0 = 0; c0 < p.D; c0 += 16) {
      const __mmask16 live = tail_mask(p.D - c0);
      __m512 x[16];
      for (int64_t i = 0; i < 16; ++i)
        x[i] = j0 + i < p.Sk ? _mm512_maskz_loadu_ps(live, k0 + (j0 + i) * p.k.ss + c0) : _mm512_setzero_ps();
      transpose16(x);
      for (int64_t c = 0; c < std::min<int64_t>(16, p.D - c0); ++c) _mm512_storeu_ps(kt + (c0 + c) * p.skp + j0, x[c]);
    }
  }
#else
  for (int64_t j = 0; j < p.Sk; ++j)
    for (int64_t c = 0; c < p.D; ++c) kt[c * p.skp + j] = k0[j * p.k.ss + c];
#endif
}

// Asks for head (b, h)'s query, key and value rows and its output rows before they are needed. Why: in a model the
// three projections have just written q, k and v (2.6 MB for MiniLM at batch 32, past L2), and each head reads
// one D-float slice per row at a stride of H * D floats, a pattern the hardware prefetchers do not follow: the
// kernel ran at ~530 us per MiniLM layer there against ~300 us on warm inputs (Zen 4 VM). Asked one head ahead,
// the misses overlap the current head's arithmetic. Always inlined: as a function of its own, GCC finds it free of
// side effects (prefetches do not count) and deletes every call to it.
__attribute__((always_inline)) inline void prefetch_head(const Problem& p, int64_t b, int64_t h) {
  const int64_t bytes = p.D * static_cast<int64_t>(sizeof(float));
  for (int64_t off = 0; off < bytes; off += 64) {
    for (int64_t i = 0; i < p.Sq; ++i) {
      __builtin_prefetch(reinterpret_cast<const char*>(p.q.row(b, h, i)) + off, 0, 3);
      __builtin_prefetch(reinterpret_cast<const char*>(p.out + ((b * p.Sq + i) * p.H + h) * p.D) + off, 1, 3);
    }
    for (int64_t j = 0; j < p.Sk; ++j) {
      __builtin_prefetch(reinterpret_cast<const char*>(p.k.row(b, h, j)) + off, 0, 3);
      __builtin_prefetch(reinterpret_cast<const char*>(p.v.row(b, h, j)) + off, 0, 3);
    }
  }
}

// rows in 1..8: the block's row count as a compile-time constant, so its accumulators stay in registers
void run_rows(int rows, const Problem& p, int64_t b, int64_t h, int64_t i0, const float* kt, float* s) {
  switch (rows) {
    case 1: return run_block<1>(p, b, h, i0, kt, s);
    case 2: return run_block<2>(p, b, h, i0, kt, s);
    case 3: return run_block<3>(p, b, h, i0, kt, s);
    case 4: return run_block<4>(p, b, h, i0, kt, s);
    case 5: return run_block<5>(p, b, h, i0, kt, s);
    case 6: return run_block<6>(p, b, h, i0, kt, s);
    case 7: return run_block<7>(p, b, h, i0, kt, s);
    default: return run_block<8>(p, b, h, i0, kt, s);
  }
}
}  // namespace

// q (B, H, Sq, D), k / v (B, H, Sk, D) float32 with unit stride in D; mask: empty, or (B|1, H|1, Sq|1, Sk) bool
// (true = attend) or float32 (added to the scores) with unit stride in Sk -> (B, Sq, H, D) float32
torch::Tensor short_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask, double scale) {
  for (const auto* t : {&q, &k, &v})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat32 && t->dim() == 4 && t->stride(3) == 1,
                "q, k, v: (B, H, S, D) float32 on CPU with unit stride in D");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Sk = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.sizes() == k.sizes(),
              "k and v: (B, H, Sk, D) matching q's B, H and D, got q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  Problem p{view4(q), view4(k), view4(v), MaskView{}, H, Sq, Sk, D, (Sk + 15) / 16 * 16, static_cast<float>(scale),
            nullptr};
  if (mask.numel() > 0) {
    TORCH_CHECK(mask.device().is_cpu() && mask.dim() == 4 &&
                    (mask.scalar_type() == torch::kBool || mask.scalar_type() == torch::kFloat32),
                "mask: 4-D bool or float32 on CPU, got ", mask.scalar_type());
    TORCH_CHECK((mask.size(0) == B || mask.size(0) == 1) && (mask.size(1) == H || mask.size(1) == 1) &&
                    (mask.size(2) == Sq || mask.size(2) == 1) && mask.size(3) == Sk && mask.stride(3) == 1,
                "mask: (B|1, H|1, Sq|1, Sk) with unit stride in Sk for q ", q.sizes(), " and k ", k.sizes(),
                ", got ", mask.sizes());
    MaskView& mv = p.mask;
    mv.kind = mask.scalar_type() == torch::kBool ? 1 : 2;
    if (mv.kind == 1) mv.pb = mask.data_ptr<bool>();
    else mv.pf = mask.data_ptr<float>();
    mv.sb = mask.size(0) == 1 ? 0 : mask.stride(0);
    mv.sh = mask.size(1) == 1 ? 0 : mask.stride(1);
    mv.sq = mask.size(2) == 1 ? 0 : mask.stride(2);
  }
  auto out = torch::empty({B, Sq, H, D}, q.options());
  if (out.numel() == 0) return out;
  p.out = out.data_ptr<float>();
  // query rows split into near-equal blocks of at most 8 (18 -> 6 + 6 + 6, not 8 + 8 + 2)
  const int64_t blocks = (Sq + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(D * p.skp, 0.f), s(kRowBlock * p.skp, 0.f);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      if (bh == begin) prefetch_head(p, b, h);
      if (bh + 1 < end) prefetch_head(p, (bh + 1) / H, (bh + 1) % H);
      transpose_keys(p, b, h, kt.data());
      for (int64_t blk = 0, i0 = 0; blk < blocks; ++blk) {
        const int64_t i1 = Sq * (blk + 1) / blocks;
        run_rows(static_cast<int>(i1 - i0), p, b, h, i0, kt.data(), s.data());
        i0 = i1;
      }
    }
  });
  return out;
}
