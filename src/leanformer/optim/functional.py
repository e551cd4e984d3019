"""Functional APOLLO and plain-AdamW updates, in the torch.optim layout: ``apollo`` dispatches to
``_single_tensor_apollo`` (the reference loop) or ``_foreach_apollo`` (batched, tested against it); ``adamw``
likewise for the parameters that are not on the low-rank path.

Update for one matrix G (m, n) at step t (official code, ``proj_type="std"``):
  R = low-rank projection of G (see projection.py); M, V = Adam moments of R; N = M / (sqrt(V) + eps)
  s = ||N_c|| / (||R_c|| + 1e-8) per channel c (channel-wise) or ||N|| / (||R|| + 1e-8) (tensor-wise)
  U = s * G                                        (scales the raw, full-rank gradient)
  limiter: if ||U|| > gamma * prev: U *= gamma * prev / ||U||; prev = ||U||   (Fira; gamma = 1.01)
  W -= lr * sqrt(1 - b2^t) / (1 - b1^t) * sqrt(scale) * U;  W -= lr * wd * W   (decay after, as the official code)

Departures from the official code, all exact up to rounding: U is never materialised (||U||^2 is computed as
sum_c s_c^2 ||G_c||^2 and the update is one ``addcmul_``); the limiter's "first step" case is a stored ``inf``
instead of a missing key, and ``max(x, 1.01)`` is a ``clamp`` (no host sync); moments are fp32 for every
parameter dtype. Plain AdamW uses the official code's form too: lr * sqrt(1 - b2^t) / (1 - b1^t) * M / (sqrt(V) + eps).
"""
from __future__ import annotations

import math

import torch

from .distributed import LocalView, all_reduce_, local_view
from .projection import is_right, project, random_projection

_TINY = 1e-8  # the official code's guard in the scaling factor and the limiter


def apollo(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
           exp_avg_sqs: list[torch.Tensor], norm_prevs: list[torch.Tensor], state_steps: list[torch.Tensor],
           proj_seeds: list[int], *, foreach: bool | None = None, lr: float, beta1: float, beta2: float, eps: float,
           weight_decay: float, rank: int, scale_type: str, scale: float, norm_growth_limit: float | None,
           where: str = "apollo") -> None:
    """One APOLLO step for matrices. ``proj_seeds[i]`` is the seed of the projection in force at this step."""
    fn = _single_tensor_apollo if foreach is False else _foreach_apollo
    fn(params, grads, exp_avgs, exp_avg_sqs, norm_prevs, state_steps, proj_seeds, lr=lr, beta1=beta1, beta2=beta2,
       eps=eps, weight_decay=weight_decay, rank=rank, scale_type=scale_type, scale=scale,
       norm_growth_limit=norm_growth_limit, where=where)


def _step_size(step: int, lr: float, beta1: float, beta2: float) -> float:
    return lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)


def _moments(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, low: torch.Tensor, beta1: float, beta2: float,
             eps: float) -> torch.Tensor:
    """Adam moments of the low-rank gradient, in place; returns N = M / (sqrt(V) + eps)."""
    exp_avg.mul_(beta1).add_(low, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(low, low, value=1 - beta2)
    return exp_avg / exp_avg_sq.sqrt().add_(eps)


def _foreach_moments(exp_avgs: list, exp_avg_sqs: list, grads: list, beta1: float, beta2: float,
                     eps: float) -> list:
    """:func:`_moments` over lists of tensors (foreach kernels): in place; returns each M / (sqrt(V) + eps)."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    return torch._foreach_div(exp_avgs, denoms)


def _channel_dim(right: bool) -> int:
    # Norm over the rank axis leaves one factor per channel of the long side: rows if m >= n, else columns.
    return 1 if right else 0


_ROW_CHUNK = 64  # rows squared at a time for column norms: bounds the temporary to 64 x n


def _grad_channel_sq(view: LocalView, right: bool) -> torch.Tensor:
    """||G_c||^2 per channel of the local block, fp32, keepdim: (m_loc, 1) or (1, n); no full-size copy."""
    g = view.grad
    if right:
        return torch.linalg.vector_norm(g, dim=1, keepdim=True, dtype=torch.float32).square()
    # Column norms: vector_norm(dim=0) is ~10x slower than squaring row chunks and summing them on CPU.
    out = torch.zeros((1, g.shape[1]), dtype=torch.float32, device=g.device)
    for chunk in g.split(_ROW_CHUNK):
        out += chunk.float().square().sum(0, keepdim=True)
    return out


def _grad_sq_sum(view: LocalView) -> torch.Tensor:
    """||G||^2 of the local block as a 0-d fp32 tensor (a dot product when possible: the fastest reduction)."""
    g = view.grad
    if g.dtype == torch.float32 and g.is_contiguous():
        flat = g.view(-1)
        return torch.dot(flat, flat)
    return torch.linalg.vector_norm(g, dtype=torch.float32).square()


def _scaling_single(view: LocalView, low: torch.Tensor, normed: torch.Tensor, right: bool,
                    scale_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, ||U||^2) for one matrix, with the all-reduces a sharded matrix needs."""
    if scale_type == "channel":
        g_sq = _grad_channel_sq(view, right)
        dim = _channel_dim(right)
        s = torch.linalg.vector_norm(normed, dim=dim, keepdim=True) / (
            torch.linalg.vector_norm(low, dim=dim, keepdim=True) + _TINY)
        u_sq = all_reduce_((s.square() * g_sq).sum(), view.group)  # G's rows are split across ranks
        return s, u_sq
    nr = torch.stack([normed.square().sum(), low.square().sum()])
    if right:  # R rows are split across ranks; for the left projection R was already all-reduced
        all_reduce_(nr, view.group)
    s = nr[0].sqrt() / (nr[1].sqrt() + _TINY)
    return s, s.square() * all_reduce_(_grad_sq_sum(view), view.group)


def _limit(u_sq: torch.Tensor, prev: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Fira's norm-growth limiter: the factor 1/f to apply to U; updates ``prev`` in place."""
    norm = u_sq.sqrt()
    if limit is None:
        return torch.ones_like(norm)
    f = torch.clamp(norm / (prev + _TINY), min=limit) / limit  # prev = inf on the first step -> f = 1
    prev.copy_(norm / f)
    return 1 / f


def _single_tensor_apollo(params, grads, exp_avgs, exp_avg_sqs, norm_prevs, state_steps, proj_seeds, *, lr, beta1,
                          beta2, eps, weight_decay, rank, scale_type, scale, norm_growth_limit, where):
    for i, param in enumerate(params):
        view = local_view(param, grads[i], matrix=True, where=where)
        state_steps[i] += 1
        step = int(state_steps[i].item())  # a CPU tensor: no device sync
        right = is_right(view.rows, view.cols)
        proj = random_projection(view.rows, view.cols, rank, proj_seeds[i], device=view.grad.device,
                                 dtype=view.grad.dtype)
        low = project(view.grad, proj, right, view.row_offset)  # (m_loc, r) or partial (r, n)
        if not right:
            all_reduce_(low, view.group)
        normed = _moments(exp_avgs[i], exp_avg_sqs[i], low, beta1, beta2, eps)
        s, u_sq = _scaling_single(view, low, normed, right, scale_type)
        inv_f = _limit(u_sq, norm_prevs[i], norm_growth_limit)
        coef = s * inv_f * (-_step_size(step, lr, beta1, beta2) * math.sqrt(scale))
        view.param.addcmul_(view.grad, coef)  # W -= step * s/f * G, U never materialised
        if weight_decay != 0:
            view.param.add_(view.param, alpha=-lr * weight_decay)


class _Reducer:
    """Collects 0-d partial sums and all-reduces them with one call per process group."""

    def __init__(self) -> None:
        self.items: dict[object, list[torch.Tensor]] = {}

    def add(self, t: torch.Tensor, group) -> torch.Tensor:
        if group is not None:
            self.items.setdefault(group, []).append(t)
        return t

    def run(self) -> None:
        for group, ts in self.items.items():
            flat = all_reduce_(torch.cat([t.reshape(-1) for t in ts]), group)
            torch._foreach_copy_(ts, [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in ts]), ts)])
        self.items.clear()


def _foreach_apollo(params, grads, exp_avgs, exp_avg_sqs, norm_prevs, state_steps, proj_seeds, *, lr, beta1, beta2,
                    eps, weight_decay, rank, scale_type, scale, norm_growth_limit, where):
    if not params:
        return
    views = [local_view(p, g, matrix=True, where=where) for p, g in zip(params, grads)]
    rights = [is_right(v.rows, v.cols) for v in views]
    torch._foreach_add_(state_steps, 1)
    lows, red = [], _Reducer()
    for v, right, seed in zip(views, rights, proj_seeds):
        proj = random_projection(v.rows, v.cols, rank, seed, device=v.grad.device, dtype=v.grad.dtype)
        low = project(v.grad, proj, right, v.row_offset)
        lows.append(red.add(low, v.group) if not right else low)
    red.run()  # the left projections' partial sums, one all-reduce
    normeds = _foreach_moments(exp_avgs, exp_avg_sqs, lows, beta1, beta2, eps)
    scales, u_sqs = _scaling_foreach(views, rights, lows, normeds, scale_type)
    inv_fs = _limit_foreach(u_sqs, norm_prevs, norm_growth_limit)
    for v, s, inv_f, step_t in zip(views, scales, inv_fs, state_steps):
        coef = s * inv_f * (-_step_size(int(step_t.item()), lr, beta1, beta2) * math.sqrt(scale))
        v.param.addcmul_(v.grad, coef)
    if weight_decay != 0:
        locals_ = [v.param for v in views]
        torch._foreach_add_(locals_, locals_, alpha=-lr * weight_decay)


def _scaling_foreach(views, rights, lows, normeds, scale_type):
    red = _Reducer()
    if scale_type == "channel":
        g_sqs = [_grad_channel_sq(v, r) for v, r in zip(views, rights)]
        scales = [torch.linalg.vector_norm(n, dim=_channel_dim(r), keepdim=True) / (
            torch.linalg.vector_norm(lo, dim=_channel_dim(r), keepdim=True) + _TINY)
            for n, lo, r in zip(normeds, lows, rights)]
        u_sqs = [red.add((s.square() * g).sum(), v.group) for s, g, v in zip(scales, g_sqs, views)]
        red.run()
        return scales, u_sqs
    n_sq = [t.square() for t in torch._foreach_norm(normeds)]
    r_sq = [t.square() for t in torch._foreach_norm(lows)]
    g_tot = [red.add(_grad_sq_sum(v), v.group) for v in views]
    for n, r, v, right in zip(n_sq, r_sq, views, rights):
        if right:
            red.add(n, v.group), red.add(r, v.group)
    red.run()
    scales = [n.sqrt() / (r.sqrt() + _TINY) for n, r in zip(n_sq, r_sq)]
    return scales, [s.square() * g for s, g in zip(scales, g_tot)]


def _limit_foreach(u_sqs, norm_prevs, limit):
    norms = torch.stack(u_sqs).sqrt()  # (P,)
    if limit is None:
        return list(torch.ones_like(norms).unbind())
    f = torch.clamp(norms / (torch.stack(norm_prevs) + _TINY), min=limit) / limit
    torch._foreach_copy_(norm_prevs, list((norms / f).unbind()))
    return list((1 / f).unbind())


def adamw(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, foreach: bool | None = None, lr: float, beta1: float,
          beta2: float, eps: float, weight_decay: float, where: str = "adamw") -> None:
    """Plain AdamW (official-code form) for the parameters off the low-rank path; DTensors update shard-locally."""
    views = [local_view(p, g, matrix=False, where=where) for p, g in zip(params, grads)]
    same = all(v.param.dtype == m.dtype for v, m in zip(views, exp_avgs))
    fn = _foreach_adamw if foreach is not False and same and views else _single_tensor_adamw
    fn(views, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


def _single_tensor_adamw(views, exp_avgs, exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps, weight_decay):
    for v, exp_avg, exp_avg_sq, step_t in zip(views, exp_avgs, exp_avg_sqs, state_steps):
        step_t += 1
        grad = v.grad.to(exp_avg.dtype)
        normed = _moments(exp_avg, exp_avg_sq, grad, beta1, beta2, eps)
        v.param.add_(normed, alpha=-_step_size(int(step_t.item()), lr, beta1, beta2))
        if weight_decay != 0:
            v.param.add_(v.param, alpha=-lr * weight_decay)


def _foreach_adamw(views, exp_avgs, exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps, weight_decay):
    ps, gs = [v.param for v in views], [v.grad for v in views]
    torch._foreach_add_(state_steps, 1)
    normeds = _foreach_moments(exp_avgs, exp_avg_sqs, gs, beta1, beta2, eps)
    torch._foreach_add_(ps, torch._foreach_mul(normeds, [-_step_size(int(t.item()), lr, beta1, beta2)
                                                         for t in state_steps]))
    if weight_decay != 0:
        torch._foreach_add_(ps, ps, alpha=-lr * weight_decay)
