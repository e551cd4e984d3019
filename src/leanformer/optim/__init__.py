"""leanformer.optim: APOLLO and APOLLO-Mini (arXiv 2412.05270), torch.optim style, with SGD-like state."""
from .apollo import APOLLO, APOLLOMini
from .functional import adamw, apollo
from .groups import lean_param_groups, paper_param_groups
from .state import state_bytes

__all__ = ["APOLLO", "APOLLOMini", "apollo", "adamw", "lean_param_groups", "paper_param_groups", "state_bytes"]
