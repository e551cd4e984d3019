"""leanformer.ops: autograd Functions that save only what backward needs (no nn.Module, no transformers).

Functional entry points (each falls back to the stock op when no gradient is needed):

- ``lean_linear(x, weight, bias=None, *, transposed=False)``: saves ``x``'s recompute recipe instead of
  ``x`` when ``x`` comes from a lean norm / activation / gated product (``recipe.py``).
- ``lean_layer_norm``, ``lean_rms_norm``: save input + row statistics; attach a recipe to their output.
- ``lean_activation(x, kind)``, ``lean_gelu``, ``lean_silu``: save the pre-activation only.
- ``lean_gated_act(g, u, kind)``: ``act(g) * u`` saving ``g`` and ``u`` only.
- ``lean_dropout``: 1-bit packed mask, same RNG draws as ``F.dropout``.
- approximate, opt-in (``approx.py``): ``lean_gelu_from_output``, ``lean_layer_norm_from_output``.
- ``lean_softmax_dropout_matmul``: eager attention's ``dropout(softmax(s)) @ v`` keeping P + 1-bit mask.

The plain references the tests compare against live in ``leanformer.reference``.
"""
from __future__ import annotations

from .activation import ACTIVATIONS, GELU_KINDS, lean_activation, lean_gelu, lean_silu
from .bitpack import pack_bits, unpack_bits
from .dropout import lean_dropout
from .gated import lean_gated_act
from .linear import lean_linear
from .norm import lean_layer_norm, lean_rms_norm
from .recipe import Recipe, find_recipe
from .softmax_dropout import lean_softmax_dropout_matmul

__all__ = [
    "ACTIVATIONS", "GELU_KINDS", "Recipe", "find_recipe", "lean_activation", "lean_dropout", "lean_gated_act",
    "lean_gelu", "lean_layer_norm", "lean_linear", "lean_rms_norm", "lean_silu", "lean_softmax_dropout_matmul",
    "pack_bits", "unpack_bits",
]
