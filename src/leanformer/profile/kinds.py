"""Which kind of op saved a tensor for backward: matmul input, norm, activation, softmax/attention, dropout mask.

Rules, in order (the first that matches wins; a storage saved by several autograd nodes takes the kind of
highest priority in ``KINDS`` order among its savers):

1. The saving node's class (``grad_fn`` type name, e.g. ``MmBackward0``, ``NativeLayerNormBackward0``,
   ``_LeanGELUFunctionBackward``) names a known op family: this is robust because autograd names nodes after
   the aten op (or the custom ``autograd.Function``) that saved the tensor.
2. A storage last filled by a random-number op (``bernoulli_``; how ``F.dropout`` builds its fp32 mask on CPU)
   is a dropout mask, whatever op saved it.
3. Generic elementwise ops (``mul``, ``pow``, ``rsqrt``, ...) take the kind of the innermost module whose
   forward was running: inside a norm module (``LlamaRMSNorm``) -> norm, inside an activation module
   (``NewGELUActivation``) -> activation, inside ``nn.Dropout`` -> dropout mask, inside an MLP block
   (``LlamaMLP``'s GLU product ``act(gate) * up``) -> activation.
4. Everything else (embedding indices, cross-entropy's log-softmax, residual temporaries) -> other.
"""
from __future__ import annotations

import re

# Report keys, in priority order (a storage saved by a softmax node and a matmul is attention, not matmul).
KINDS = ("dropout_mask", "softmax_attention", "matmul_input", "norm", "activation", "other")
KIND_LABELS = {
    "matmul_input": "matmul input",
    "norm": "norm",
    "activation": "activation function",
    "softmax_attention": "softmax / attention",
    "dropout_mask": "dropout mask",
    "other": "other",
}

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "mv", "addmv", "dot", "vdot",
           "convolution", "einsum", "tensordot"}
_ACTIVATION = {"gelu", "silu", "relu", "relu6", "tanh", "sigmoid", "elu", "selu", "celu", "leakyrelu", "hardswish",
               "hardsigmoid", "hardtanh", "mish", "softplus", "glu", "threshold", "prelu", "swiglu", "geglu",
               "erf", "logsigmoid"}

_BACKWARD_SUFFIX = re.compile(r"backward\d*$")


def op_name(node_type_name: str) -> str:
    """``'NativeLayerNormBackward0'`` -> ``'nativelayernorm'``; ``'_LeanGELUFunctionBackward'`` -> ``'leangelufunction'``."""
    name = node_type_name.lower().lstrip("_")
    return _BACKWARD_SUFFIX.sub("", name)


def kind_of_node(node_type_name: str) -> str | None:
    """Kind named by the autograd node alone, or ``None`` for generic elementwise / unknown ops."""
    op = op_name(node_type_name)
    if "dropout" in op:
        return "dropout_mask"
    if "logsoftmax" in op or "crossentropy" in op or "nllloss" in op:
        return "other"  # the loss: cross-entropy keeps log-softmax(logits), not attention probabilities
    if "softmax" in op or "attention" in op or "scaleddotproduct" in op:
        return "softmax_attention"
    if "norm" in op:  # native_layer_norm, rms_norm, batch/group norm, custom Lean*Norm Functions
        return "norm"
    if op in _MATMUL or "linear" in op or "matmul" in op:
        return "matmul_input"
    if op in _ACTIVATION or any(a in op for a in ("gelu", "silu", "swiglu", "geglu", "relu")):
        return "activation"
    return None  # generic elementwise (mul, pow, rsqrt, ...) or unknown: decided by the module context


def kind_of_module(module_type_name: str) -> str | None:
    """Kind implied by the module an elementwise op ran in (rule 3), or ``None``."""
    name = module_type_name.lower()
    if "dropout" in name:
        return "dropout_mask"
    if "norm" in name:
        return "norm"
    if any(a in name for a in ("activation", "gelu", "silu", "relu", "tanh", "sigmoid", "swish", "mish", "glu")):
        return "activation"
    if any(a in name for a in ("mlp", "feedforward", "ffn", "intermediate")):
        return "activation"
    return None


def classify(node_type_names: set[str], module_type_name: str | None, random_filled: bool) -> str:
    """The kind of one saved storage, given every autograd node that saved it and where it was saved."""
    kinds = {kind_of_node(n) for n in node_type_names}
    if random_filled:
        kinds.add("dropout_mask")
    if None in kinds or not kinds:  # at least one generic saver: use the module context
        kinds.discard(None)
        kinds.add((kind_of_module(module_type_name) if module_type_name else None) or "other")
    return min(kinds, key=KINDS.index)
