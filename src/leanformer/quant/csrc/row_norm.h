// One row of LayerNorm(x + residual), shared by residual_layer_norm (residual_norm.cpp) and the fused int8 kernels'
// residual-norm epilogue (Int8Linear::finish_rows), so that both give the same bits.
#pragma once
#include <cstdint>

// out = LayerNorm(x + r) over n values with float32 two-pass moments; out may be x (in place). Defined once, out
// of line, in residual_norm.cpp: inlined into different callers, the vectorised reductions could be compiled with
// different lane orders (alignment peeling, alias versioning), and the sums would no longer agree bit for bit.
void norm_row(const float* x, const float* r, const float* w, const float* b, int64_t n, float eps, float* out);
