"""``LeanConfig``: which memory-lean techniques ``patch_`` applies (see docs/patch.md)."""
from __future__ import annotations

import dataclasses

from leanformer.config import BaseConfig

ATTENTION_MODES = ("auto", "flash", "tempo", "sdpa", "off")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LeanConfig(BaseConfig):
    """What to swap. Every default is exact; the two ``approximate_*`` options are Tempo's lossy variants.

    attention: "auto" uses torch SDPA when no dropout is active (fused kernels keep no S x S tensor) and the
        lean flash Function otherwise; "flash" always the lean Function (Q, K, V, O, logsumexp, 1-bit mask);
        "tempo" keeps P + 1-bit mask (no Q K^T recompute); "sdpa" always torch SDPA; "off" leaves attention.
    """

    attention: str = "auto"
    linear: bool = True  # LeanLinear: fuses with a preceding lean norm / activation (saves their input)
    norms: bool = True  # LayerNorm / RMSNorm
    activations: bool = True  # GELU variants, SiLU
    gated_mlp: bool = True  # LLaMA-style gate/up/down MLPs: keep only gate and up pre-activations
    dropout: bool = True  # dropout with a 1-bit mask owned by the layer
    approximate_gelu_from_output: bool = False  # Tempo: rebuild GELU' from its output (approximate)
    approximate_layernorm_from_output: bool = False  # Tempo: rebuild x-hat from the output (approximate)
    generic: bool = True  # also swap modules of unnamed architectures by type
    dtypes: tuple[str, ...] = DTYPES  # parameter dtypes patch_ accepts
    exclude: tuple[str, ...] = ()  # module paths (or path prefixes) never swapped

    def _validate(self) -> None:
        if self.attention not in ATTENTION_MODES:
            self._fail("attention", self.attention, f"must be one of {ATTENTION_MODES}")
        for name in ("linear", "norms", "activations", "gated_mlp", "dropout", "approximate_gelu_from_output",
                     "approximate_layernorm_from_output", "generic"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, getattr(self, name), "must be a bool")
        if isinstance(self.dtypes, list):
            object.__setattr__(self, "dtypes", tuple(self.dtypes))  # JSON round-trip gives lists
        if isinstance(self.exclude, list):
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if not self.dtypes or any(d not in DTYPES for d in self.dtypes):
            self._fail("dtypes", self.dtypes, f"must be a non-empty subset of {DTYPES}")
        if any(not isinstance(p, str) or not p for p in self.exclude):
            self._fail("exclude", self.exclude, "must be non-empty module path strings")
