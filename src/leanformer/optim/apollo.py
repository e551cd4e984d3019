"""APOLLO and APOLLO-Mini optimizers (torch.optim style): validation and state; the math is in functional.py.

Paper: "APOLLO: SGD-like Memory, AdamW-level Performance", Zhu et al., arXiv 2412.05270; official code
``zhuhanqing/APOLLO`` / PyPI ``apollo-torch`` 1.0.3. Departures from the official code:

- Routing: by default every parameter with 2+ dimensions (embeddings and LM head included) is on the low-rank
  path and the rest on plain AdamW, in the same group; ``lowrank=False`` in a group opts it out, ``lowrank=True``
  forces it (then every parameter must have 2+ dims). Parameters with more than 2 dims are viewed as
  (dim 0, the rest). ``paper_param_groups`` (groups.py) builds the paper's grouping instead.
- State holds only tensors: ``step`` (CPU fp32, as torch.optim), ``exp_avg``, ``exp_avg_sq`` (fp32 for every
  parameter dtype) and ``norm_prev`` (the limiter's last norm). The projection is regenerated from a seed
  derived from the parameter's position and the step (projection.py), so ``torch.load(weights_only=True)``
  works and a resumed run is bit-identical. ``load_state_dict`` keeps the saved state dtypes (torch would cast
  the fp32 moments to a bf16 parameter's dtype).
- DTensor parameters (FSDP2) are handled so that the result equals a single-process run (distributed.py).
"""
from __future__ import annotations

import math
import numbers

import torch

from . import quant_state
from .distributed import local_view
from .functional import _step_size, adamw, apollo
from .projection import SeedChain, is_right
from .state import state_bytes

_SCALE_TYPES = ("channel", "tensor")


class APOLLO(torch.optim.Optimizer):
    """AdamW-level training with SGD-like memory: AdamW moments on a random rank-``rank`` projection of each
    matrix gradient give a channel- or tensor-wise scaling of the raw gradient, with a norm-growth limiter.

    Args:
        params: parameters or groups (dicts); group keys override the defaults below, plus ``lowrank``
            (``None``: every parameter with 2+ dims is low-rank, ``True``: all must be, ``False``: none).
        lr: learning rate (both paths).
        rank: projection rank r, 1 <= r <= min(m, n) of every low-rank matrix.
        scale_type: ``"channel"`` (one factor per row/column of the long side) or ``"tensor"`` (one per matrix).
        update_proj_gap: draw a new projection every this many steps.
        scale: the low-rank update is multiplied by ``sqrt(scale)`` (official code); ~n/r compensates the
            projection's shrinking of the scaling factor.
        proj: only ``"random"`` (the paper's choice; SVD projections are not offered).
        betas, eps, weight_decay: as AdamW (decoupled decay, applied after the update as the official code).
        norm_growth_limit: gamma of the limiter (``||U_t|| <= gamma ||U_{t-1}||``); ``None`` disables it.
        foreach: ``False`` runs the single-tensor reference loop; otherwise the batched path.
        Group key ``moments_8bit=True``: the group's parameters off the low-rank path keep 8-bit AdamW moments
            (quant_state.py; ~2 B/param), e.g. for embeddings and the LM head (see ``lean_param_groups``).
    """

    def __init__(self, params, lr: float = 1e-3, *, rank: int, scale_type: str = "channel",
                 update_proj_gap: int = 200, scale: float = 1.0, proj: str = "random",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 norm_growth_limit: float | None = 1.01, foreach: bool | None = None):
        defaults = dict(lr=lr, rank=rank, scale_type=scale_type, update_proj_gap=update_proj_gap, scale=scale,
                        proj=proj, betas=betas, eps=eps, weight_decay=weight_decay,
                        norm_growth_limit=norm_growth_limit, foreach=foreach, lowrank=None, moments_8bit=False)
        _check_hyper(defaults, "defaults")
        self._seeds = SeedChain()
        super().__init__(params, defaults)
        self._saved_state: dict | None = None
        self.register_load_state_dict_pre_hook(APOLLO._keep_saved_state)
        self.register_load_state_dict_post_hook(APOLLO._restore_state_dtypes)

    # -- groups -------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        try:
            _check_group(self.param_groups[index], f"parameter group {index}")
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise

    @staticmethod
    def is_lowrank(group: dict, param: torch.Tensor) -> bool:
        """Whether ``param`` of ``group`` takes the low-rank path."""
        return group["lowrank"] if group["lowrank"] is not None else param.dim() >= 2

    # -- step ---------------------------------------------------------------------------------------------
    # The projection is drawn from a seeded torch.Generator and the step count is read on the host (a CPU
    # tensor, no device sync); both would make torch.compile graph-break and recompile on every step, so the
    # step always runs eagerly, also when called from compiled code (docs/optim.md).
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        position = 0  # 1-based over all groups: the official code's first projection seed
        for index, group in enumerate(self.param_groups):
            where = f"parameter group {index}"
            low = {k: [] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs", "norm_prevs", "state_steps",
                                   "proj_seeds")}
            plain = {k: [] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs", "state_steps")}
            for param in group["params"]:
                position += 1
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise TypeError(f"{where}: APOLLO does not support sparse gradients "
                                    f"(parameter of shape {tuple(param.shape)})")
                lowrank = self.is_lowrank(group, param)
                state = self.state[param]
                if not state:
                    self._init_state(state, param, group, lowrank, where)
                if not lowrank and group["moments_8bit"]:
                    self._step_8bit(param, state, group, where)
                    continue
                bucket = low if lowrank else plain
                bucket["params"].append(param)
                bucket["grads"].append(param.grad)
                bucket["exp_avgs"].append(state["exp_avg"])
                bucket["exp_avg_sqs"].append(state["exp_avg_sq"])
                bucket["state_steps"].append(state["step"])
                if lowrank:
                    low["norm_prevs"].append(state["norm_prev"])
                    epoch = int(state["step"].item()) // group["update_proj_gap"]
                    low["proj_seeds"].append(self._seeds(position, epoch))
            beta1, beta2 = group["betas"]
            common = dict(foreach=group["foreach"], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                          weight_decay=group["weight_decay"], where=where)
            if low["params"]:
                apollo(**low, **common, rank=group["rank"], scale_type=group["scale_type"], scale=group["scale"],
                       norm_growth_limit=group["norm_growth_limit"])
            if plain["params"]:
                adamw(**plain, **common)
        return loss

    @staticmethod
    def _step_8bit(param: torch.Tensor, state: dict, group: dict, where: str) -> None:
        """Plain AdamW with 8-bit moments (quant_state.py): a per-tensor loop, no batched path."""
        view = local_view(param, param.grad, matrix=False, where=where)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        quant_state.adamw_8bit_step(view.param, view.grad, state, lr=group["lr"], beta1=beta1, beta2=beta2,
                                    eps=group["eps"], weight_decay=group["weight_decay"],
                                    step_size=_step_size(int(state["step"].item()), group["lr"], beta1, beta2))

    @staticmethod
    def _init_state(state: dict, param: torch.Tensor, group: dict, lowrank: bool, where: str) -> None:
        view = local_view(param, param.grad, matrix=lowrank, where=where)
        dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        device = view.param.device
        state["step"] = torch.tensor(0.0, dtype=torch.float32)  # CPU, as torch.optim (no device sync to read)
        if lowrank:
            r = group["rank"]
            shape = (view.param.shape[0], r) if is_right(view.rows, view.cols) else (r, view.cols)
            state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=dtype, device=device)
            state["norm_prev"] = torch.full((), math.inf, dtype=torch.float32, device=device)
        elif group["moments_8bit"]:
            quant_state.init_state(state, view.param)
        else:
            state["exp_avg"] = torch.zeros_like(view.param, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(view.param, dtype=dtype, memory_format=torch.preserve_format)

    # -- checkpointing ------------------------------------------------------------------------------------
    @staticmethod
    def _keep_saved_state(optimizer: "APOLLO", state_dict: dict) -> None:
        optimizer._saved_state = state_dict  # the caller's tensors, before torch casts them

    @staticmethod
    def _restore_state_dtypes(optimizer: "APOLLO") -> None:
        saved, optimizer._saved_state = optimizer._saved_state, None
        if saved is None:
            return
        ids = [i for g in saved["param_groups"] for i in g["params"]]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for pid, param in zip(ids, params):
            for key, value in saved["state"].get(pid, {}).items():
                if key != "step" and isinstance(value, torch.Tensor):
                    optimizer.state[param][key] = value.to(device=optimizer.state[param][key].device, copy=True)

    # -- reporting ----------------------------------------------------------------------------------------
    def state_bytes(self) -> dict:
        """Bytes of optimizer state per group and in total (see ``leanformer.optim.state_bytes``)."""
        return state_bytes(self)


class APOLLOMini(APOLLO):
    """APOLLO-Mini: rank 1, one tensor-wise scaling factor per matrix, ``scale=128`` (the paper's recipe)."""

    def __init__(self, params, lr: float = 1e-3, *, rank: int = 1, scale_type: str = "tensor",
                 update_proj_gap: int = 200, scale: float = 128.0, **kwargs):
        super().__init__(params, lr, rank=rank, scale_type=scale_type, update_proj_gap=update_proj_gap,
                         scale=scale, **kwargs)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_hyper(group: dict, where: str) -> None:
    """Raise ValueError/TypeError naming ``where`` for a bad hyperparameter."""
    def bad(msg: str, kind=ValueError):
        raise kind(f"{where}: {msg}")

    rank = group["rank"]
    if not isinstance(rank, int) or isinstance(rank, bool):
        bad(f"rank must be an int, got {rank!r}", TypeError)
    if rank <= 0:
        bad(f"rank must be >= 1, got {rank}")
    gap = group["update_proj_gap"]
    if not isinstance(gap, int) or isinstance(gap, bool) or gap < 1:
        bad(f"update_proj_gap must be an int >= 1, got {gap!r}")
    if not _is_number(group["lr"]) or group["lr"] < 0:
        bad(f"lr must be a number >= 0, got {group['lr']!r}")
    betas = group["betas"]
    if len(betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas):
        bad(f"betas must be two numbers in [0, 1), got {betas!r}")
    for key in ("eps", "weight_decay"):
        if not _is_number(group[key]) or group[key] < 0:
            bad(f"{key} must be a number >= 0, got {group[key]!r}")
    if not _is_number(group["scale"]) or group["scale"] <= 0:
        bad(f"scale must be a number > 0, got {group['scale']!r}")
    if group["scale_type"] not in _SCALE_TYPES:
        bad(f"scale_type must be one of {_SCALE_TYPES}, got {group['scale_type']!r}")
    if group["proj"] != "random":
        bad(f"proj must be 'random' (the only projection offered), got {group['proj']!r}")
    limit = group["norm_growth_limit"]
    if limit is not None and (not _is_number(limit) or limit < 1.0):
        bad(f"norm_growth_limit must be None or a number >= 1, got {limit!r}")
    if group["lowrank"] not in (None, True, False):
        bad(f"lowrank must be None, True or False, got {group['lowrank']!r}")
    if group["moments_8bit"] not in (True, False):
        bad(f"moments_8bit must be True or False, got {group['moments_8bit']!r}")


def _check_group(group: dict, where: str) -> None:
    _check_hyper(group, where)
    for j, param in enumerate(group["params"]):
        what = f"{where}, parameter {j} of shape {tuple(param.shape)}"
        if param.is_complex():
            raise TypeError(f"{what}: complex parameters are not supported")
        if not param.is_floating_point():
            raise TypeError(f"{what}: parameters must be floating point, got {param.dtype}")
        if group["lowrank"] is True and param.dim() < 2:
            raise ValueError(f"{what}: the low-rank path (lowrank=True) needs a tensor with 2 or more dims; "
                             "put it in a group with lowrank=False")
        if APOLLO.is_lowrank(group, param):
            rows, cols = param.shape[0], param[0].numel()
            if group["rank"] > min(rows, cols):
                raise ValueError(f"{what}: rank {group['rank']} is larger than the matrix's smaller side "
                                 f"{min(rows, cols)}; lower rank or set lowrank=False for it")
