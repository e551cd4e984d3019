// The kernels defined in the other source files, declared once for the bindings in quant_cpu.cpp (and for
// tests that build some of the files on their own, tests/quant/test_quant_portable_build.py).
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <vector>

// quant_cpu.cpp
std::vector<torch::Tensor> quantize_rows(const torch::Tensor& x);
// amx_int8.cpp
bool amx_int8_ready();
std::string amx_int8_status();
std::vector<torch::Tensor> amx_int8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                           const torch::Tensor& packed, const torch::Tensor& col_scale,
                                           const torch::Tensor& bias, int64_t activation, bool quantize);
std::vector<torch::Tensor> amx_int8_linear_codes(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                 const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                 const torch::Tensor& bias, int64_t activation);
std::vector<torch::Tensor> amx_int8_linear_norm(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                const torch::Tensor& bias, const torch::Tensor& residual,
                                                const torch::Tensor& weight, const torch::Tensor& norm_bias,
                                                double eps);
torch::Tensor amx_gelu_(torch::Tensor& x);
// vnni_int8.cpp (the same operands and outputs as amx_int8_linear, on AVX512-VNNI)
bool vnni_int8_ready();
std::string vnni_int8_status();
std::vector<torch::Tensor> vnni_int8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                            const torch::Tensor& packed, const torch::Tensor& col_scale,
                                            const torch::Tensor& bias, int64_t activation, bool quantize);
std::vector<torch::Tensor> vnni_int8_linear_codes(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                  const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                  const torch::Tensor& bias, int64_t activation);
std::vector<torch::Tensor> vnni_int8_linear_norm(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                                 const torch::Tensor& packed, const torch::Tensor& col_scale,
                                                 const torch::Tensor& bias, const torch::Tensor& residual,
                                                 const torch::Tensor& weight, const torch::Tensor& norm_bias,
                                                 double eps);
// amx_w4.cpp
std::vector<torch::Tensor> amx_w4_linear(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& zero,
                                         const torch::Tensor& scale, int64_t group_size, const torch::Tensor& bias,
                                         int64_t activation, bool bf16_out);
std::vector<torch::Tensor> amx_w4_codebook_linear(const torch::Tensor& x, const torch::Tensor& codes,
                                                  const torch::Tensor& table, const torch::Tensor& ids,
                                                  const torch::Tensor& scale, int64_t group_size,
                                                  const torch::Tensor& bias, int64_t activation, bool bf16_out);
bool amx_w4_ready();
// short_attention.cpp
torch::Tensor short_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask, double scale);
// residual_norm.cpp
std::vector<torch::Tensor> residual_layer_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                               const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                               bool quantize);
// embedding_rows.cpp
torch::Tensor embedding_rows(const torch::Tensor& codes, const torch::Tensor& scale, const torch::Tensor& zero,
                             const torch::Tensor& ids);
torch::Tensor embedding_sum(const std::vector<torch::Tensor>& codes, const std::vector<torch::Tensor>& scale,
                            const std::vector<torch::Tensor>& zero, const std::vector<torch::Tensor>& ids);
// w4a8_unpack.cpp
torch::Tensor unpack_w4a8(const torch::Tensor& codes, const torch::Tensor& zero, const torch::Tensor& scale,
                          const torch::Tensor& inv, int64_t group_size);
std::vector<torch::Tensor> amx_w4a8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                           const torch::Tensor& codes, const torch::Tensor& zero,
                                           const torch::Tensor& scale, const torch::Tensor& inv, int64_t group_size,
                                           const torch::Tensor& col_scale, const torch::Tensor& bias,
                                           int64_t activation, bool quantize);
std::vector<torch::Tensor> vnni_w4a8_linear(const torch::Tensor& xq, const torch::Tensor& row_scale,
                                            const torch::Tensor& codes, const torch::Tensor& zero,
                                            const torch::Tensor& scale, const torch::Tensor& inv, int64_t group_size,
                                            const torch::Tensor& col_scale, const torch::Tensor& bias,
                                            int64_t activation, bool quantize);
// ant_search.cpp
std::vector<torch::Tensor> ant_alpha_events(const torch::Tensor& r, const torch::Tensor& u, const torch::Tensor& neg,
                                            const torch::Tensor& t_pos, const torch::Tensor& v_pos,
                                            const torch::Tensor& t_neg, const torch::Tensor& v_neg, int64_t gs,
                                            int64_t lo, int64_t hi);
// int8_encoder.cpp
std::vector<torch::Tensor> int8_bert_encoder(const torch::Tensor& hidden, const torch::Tensor& mask,
                                             const std::vector<torch::Tensor>& weights, const std::vector<double>& eps,
                                             int64_t heads, double scaling, bool amx);
