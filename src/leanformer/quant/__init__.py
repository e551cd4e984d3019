"""leanformer.quant: weight quantization with packed storage, real CPU kernels and plain-safetensors checkpoints.

    from leanformer.quant import quantize_, WeightOnlyConfig, EmbeddingConfig, save_quantized, load_quantized
    report = quantize_(model, WeightOnlyConfig(bits=4, group_size=64))
    quantize_(model, EmbeddingConfig(bits=8))
    save_quantized(model, "out/")          # model.safetensors + leanformer_quant.json (+ config.json)
    same_kind_of_model = load_quantized("out/")
"""
from .api import LayerReport, QuantReport, quantize_, quantize_module, quantize_weight, register_handler
from .configs import (ANTConfig, EmbeddingConfig, MixedPrecisionConfig, SQuantConfig, W4A8Config, W8A8Config,
                      WeightOnlyConfig, config_from_dict)
from .kernels import KernelPolicy, get_policy, set_policy
from .modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, set_activation_dtype_
from .qweight import QuantizedWeight
from .rtn import quantize_rtn
from .serialize import CheckpointError, load_quantized, save_quantized

__all__ = [
    "quantize_", "quantize_module", "quantize_weight", "register_handler", "QuantReport", "LayerReport",
    "WeightOnlyConfig", "W8A8Config", "W4A8Config", "EmbeddingConfig", "SQuantConfig", "ANTConfig", "MixedPrecisionConfig",
    "config_from_dict", "QuantizedWeight", "QuantizedLinear", "QuantizedConv2d", "QuantizedEmbedding",
    "quantize_rtn", "save_quantized", "load_quantized", "CheckpointError", "KernelPolicy", "get_policy",
    "set_policy", "set_activation_dtype_",
]
