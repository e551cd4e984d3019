"""``LeanLayerNorm`` / ``LeanRMSNorm``: drop-ins whose output a following ``LeanLinear`` rebuilds."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import lean_layer_norm, lean_rms_norm
from ..ops.approx import lean_layer_norm_from_output
from ._share import reject, share_params


class LeanLayerNorm(nn.Module):
    """``nn.LayerNorm`` saving input + row stats (exact). ``approximate=True``: Tempo/Apex style, saves
    the output instead and rebuilds x-hat = (y - beta) / gamma in backward (see ``ops/approx.py``)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, *, approximate: bool = False):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps, self.approximate = eps, approximate
        self.weight = nn.Parameter(torch.ones(self.normalized_shape))
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape))

    @classmethod
    def from_module(cls, m: nn.Module, *, approximate: bool = False) -> "LeanLayerNorm":
        if not isinstance(m, nn.LayerNorm):
            reject(cls, m, "torch.nn.LayerNorm")
        if approximate and m.weight is None:
            raise ValueError("LeanLayerNorm(approximate=True) needs an affine LayerNorm (rebuilds x-hat from gamma)")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.normalized_shape, new.eps, new.approximate = tuple(m.normalized_shape), m.eps, approximate
        share_params(new, m, ("weight", "bias"))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate:
            return lean_layer_norm_from_output(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return lean_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, approximate={self.approximate}"


class LeanRMSNorm(nn.Module):
    """Hugging Face ``LlamaRMSNorm`` (fp32 statistics, cast back, ``weight *``) saving input + rstd."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    @classmethod
    def from_module(cls, m: nn.Module) -> "LeanRMSNorm":
        eps = getattr(m, "variance_epsilon", None)
        w = getattr(m, "weight", None)
        if not isinstance(eps, float) or not isinstance(w, nn.Parameter) or w.dim() != 1:
            reject(cls, m, "a Hugging Face LlamaRMSNorm-style module (1-D weight, float variance_epsilon)")
        x = torch.randn(3, w.shape[0], generator=torch.Generator().manual_seed(0)).to(w.device)
        with torch.no_grad():  # refuse variants with other semantics (e.g. Gemma's 1 + weight)
            if not torch.equal(m(x), lean_rms_norm(x, w, eps)):
                reject(cls, m, "LlamaRMSNorm semantics: weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype)")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.variance_epsilon = float(eps)
        share_params(new, m, ("weight",))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lean_rms_norm(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"
