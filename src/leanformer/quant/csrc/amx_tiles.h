// What the two AMX kernels share (amx_int8.cpp: W8A8; amx_w4.cpp: int4 weights x bf16 activations): the
// build guard, the per-process tile-state request, and the one tile configuration both use.
#pragma once
#include <cstdint>

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__) && defined(__linux__)
#define LEANFORMER_HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define LEANFORMER_HAVE_AMX_BF16 1
#endif
#endif

namespace amx {
inline constexpr int64_t kRows = 16;    // rows of one tile
inline constexpr int64_t kDepth = 64;   // int8 products per tile row: K consumed by one TDPBSSD
inline constexpr int64_t kBlock = 32;   // output rows (and columns) per 2x2 block of accumulator tiles
inline constexpr int64_t kTileBytes = kRows * kDepth;

#ifdef LEANFORMER_HAVE_AMX
// Linux hands out the 8 KB of tile state only on request, once per process (arch_prctl ARCH_REQ_XCOMP_PERM).
inline bool request_tiles() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;
  static const bool granted = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0;
  return granted;
}

struct TileConfig {  // the 64-byte operand of LDTILECFG, palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tiles 0-3: accumulators (int32 or float32) C[rows 0-15 | 16-31][cols 0-15 | 16-31]; 4-5: A row halves;
// 6-7: B column halves
inline void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kRows;
    cfg.colsb[t] = kDepth;  // 64 bytes: 16 accumulators, 64 int8 / 32 bf16 of A, or 16 columns x 4 int8 / 2 bf16 of B
  }
  _tile_loadconfig(&cfg);
}

enum class Dot { kInt8, kBf16 };

// Sums of one 32x32 output block (32x16 when `pair` is false) in 4-byte accumulators (int32 or float32):
// a: 32 rows of A, `lda` bytes apart; b0 / b1: two packed 16-column blocks of B, 1 KB per tile step; each step
// consumes 64 bytes of every A row (64 int8 or 32 bf16 values). acc: (32, 32) row-major.
template <Dot kind>
inline void block_sums(const void* a_rows, int64_t lda, const void* b0_tiles, const void* b1_tiles, int64_t k_tiles,
                       bool pair, void* acc_block) {
  const auto* a = static_cast<const char*>(a_rows);
  const auto* b0 = static_cast<const char*>(b0_tiles);
  const auto* b1 = static_cast<const char*>(b1_tiles);
  auto* acc = static_cast<char*>(acc_block);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  // the tile products are written out per kind: GCC's tile intrinsics paste their tile numbers into the
  // instruction text (stringified macro arguments), so they take literals, not template parameters
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    _tile_loadd(4, a + kt * kDepth, lda);
    _tile_loadd(5, a + kRows * lda + kt * kDepth, lda);
    _tile_loadd(6, b0 + kt * kTileBytes, kDepth);
    if constexpr (kind == Dot::kInt8) {
      _tile_dpbssd(0, 4, 6);
      _tile_dpbssd(2, 5, 6);
    } else {
#ifdef LEANFORMER_HAVE_AMX_BF16
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
#endif
    }
    if (pair) {
      _tile_loadd(7, b1 + kt * kTileBytes, kDepth);
      if constexpr (kind == Dot::kInt8) {
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(3, 5, 7);
      } else {
#ifdef LEANFORMER_HAVE_AMX_BF16
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
#endif
      }
    }
  }
  constexpr int64_t ld = kBlock * 4, half = kRows * 4;  // bytes per accumulator row / per 16 accumulators
  _tile_stored(0, acc, ld);
  _tile_stored(2, acc + kRows * ld, ld);
  if (pair) {
    _tile_stored(1, acc + half, ld);
    _tile_stored(3, acc + kRows * ld + half, ld);
  }
}

#endif
}  // namespace amx
