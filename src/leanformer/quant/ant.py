"""ANT: adaptive numeric type. Per tensor / channel / group, keep the type among int, flint and
power-of-two (optionally float) that quantizes the weights with the lowest MSE (Guo et al., MICRO 2022).

Source: clevercool/ANT-Quantization ``antquant/quant_modules.py`` (``int_value``, ``flint_value``,
``pot_value``, ``float_value``, ``search_mse``, ``search_adaptive_numeric_type``), with the int / pot / flint
mode, which is searched in the order int, flint, pot, and the default bounds ``--w_low 75 --w_up 150``.

What the official code does, and we keep:

* **Signed grids of 2**bits values**, sorted, with zero repeated as padding when a type has fewer values.
  - int: -2**(b-1) .. 2**(b-1)-1
  - flint: ``leanformer.quant.flint``
  - pot: 0, ±2**0 .. ±2**(2**(b-1)-2)
  - float: the official ``float_value(eb=3)`` with subnormals; at 4 bits it equals pot.
* **Scale.** ``scale = alpha / max(grid)``, so the largest grid value lands on ``alpha``.
  - ``alpha = absmax * a / 100`` for integers ``a`` in [75, 150): per output channel in the official code,
    per group here when ``group_size`` is set.
  - Each row/group keeps the ``a`` with the lowest mean squared error (the first one on ties).
* **Type choice.** A type's score is the sum of those best per-row/group MSEs. The lowest score wins; ties
  go to the first type listed. Above 6 bits, only int is searched, from ``a = 95``.
* **Rounding.** Each value goes to the nearest grid value, ties to the larger value (the CUDA scan uses
  ``<=``). The index is the *last* of equal grid entries, so zero is the padded second zero.

Departures:

* **Exact, fast search.** The official code re-quantizes the tensor 75 times per type. We compute all 75
  per-row/group errors in one pass: for threshold ``t_j`` between grid magnitudes, element ``u = |w|``
  rounds past it while ``u / scale_a >= t_j``, i.e. for every ``a <= 100*M*u/(absmax*t_j)``.
  - Thresholds passed at the largest ``a`` count for every ``a``, a dense sum. The few crossed inside
    [75, 150) are events: a histogram over ``a`` of ``u*dv_j`` and ``d(v^2)_j``, then a suffix sum, gives
    ``sum(u*v(u))`` and ``sum(v(u)^2)`` for every ``a``.
  - Hence ``SSE(a) = sum u^2 - 2 s_a sum u v + s_a^2 sum v^2``.
  - Only exact ties at a midpoint can land on the other side, and both sides have the same error there.
  - ``leanformer.reference.ant`` is the per-alpha loop that this is tested against.
* **``granularity``.** Besides per tensor, the type can be chosen per output channel or per group (the
  paper's finer choice). The ``(2**bits,)`` codebook then becomes ``(N, 2**bits)`` or ``(N, G, 2**bits)``.
* **All-zero rows/groups.** They get ``absmax = 1``; the official code divides by zero there.
* **Scale rounding.** The scale is rounded to ``scale_dtype`` before the final coding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .flint import flint_table
from .kernels import native_ops_for
from .qweight import QuantizedWeight
from .rtn import check_weight

__all__ = ["ant_quantize", "ant_search", "ant_grid", "AntChoice", "TYPES", "DEFAULT_TYPES", "GRANULARITIES"]

TYPES = ("int", "flint", "pot", "float")
DEFAULT_TYPES = ("int", "flint", "pot")  # the official int/pot/flint mode, in its search (tie-break) order
GRANULARITIES = ("tensor", "channel", "group")
SEARCH = (75, 150)  # official --w_low / --w_up (percent of absmax); above 6 bits the low end is 95


def _float_values(bits: int) -> list[float]:
    """Official ``float_value(eb=3)`` for a signed type: 3 exponent bits, subnormals, one zero."""
    b = bits - 1
    exp_bits, man_bits = (2, 0) if b == 2 else (3, b - 3)
    values = [0.0]
    for i in range(2 ** exp_bits):
        for j in range(2 ** man_bits):
            if i == 0 and j == 0:
                continue
            v = (2.0 ** i) * (j / 2 ** man_bits) if i == 0 else (2.0 ** (i - 1)) * (1 + j / 2 ** man_bits)
            values += [v, -v]
    return values


def ant_grid(kind: str, bits: int) -> torch.Tensor:
    """Sorted (2**bits,) float64 grid of a signed ANT type, zero-padded like the official ``convert_tensor``."""
    if kind not in TYPES:
        raise ValueError(f"ANT type must be one of {TYPES}, got {kind!r}")
    if not isinstance(bits, int) or not 3 <= bits <= 8:
        raise ValueError(f"ANT bits must be an int in 3..8, got {bits!r}")
    half = 2 ** (bits - 1)
    if kind == "int":
        values = [float(v) for v in range(-half, half)]
    elif kind == "flint":
        values = flint_table(bits, signed=True, integer=True).double().tolist()
    elif kind == "pot":
        values = [0.0] + [s * 2.0 ** i for i in range(half - 1) for s in (1, -1)]
    else:
        values = _float_values(bits)
    values += [0.0] * (2 ** bits - len(values))
    if len(values) != 2 ** bits:  # pragma: no cover - a construction error, not user input
        raise AssertionError((kind, bits, len(values)))
    return torch.tensor(sorted(values), dtype=torch.float64)


def _side_tables(grid: torch.Tensor):
    """Per side (positive, negative): thresholds t_j between magnitudes v_j < v_{j+1}, and the magnitudes."""
    tables = []
    for mags in (torch.unique(grid[grid >= 0]), torch.unique(-grid[grid <= 0])):  # sorted, v_0 = 0
        tables.append(((mags[1:] + mags[:-1]) / 2, mags))
    return tables  # [(t (J_side,), v (J_side + 1,)) for positive, for negative]


def _crossing(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Largest integer a with r >= a*t (exact: a*t is exact for the small dyadic thresholds used here)."""
    c = torch.floor(r / t)
    c = c - (c * t > r).to(c.dtype)  # mask arithmetic: exact here, far faster than torch.where on CPU
    return c + ((c + 1) * t <= r).to(c.dtype)


def _count_passed(r: torch.Tensor, neg: torch.Tensor, sides, a: int) -> torch.Tensor:
    """(E,) long: number of thresholds t_j of each element's side with r >= a * t_j.

    A loop of cheap comparisons over the <= 2**(bits-1) thresholds; much faster than ``bucketize`` here.
    """
    (t_pos, _), (t_neg, _) = sides
    count = torch.zeros(r.shape, dtype=torch.int32, device=r.device)
    inf = float("inf")
    for j in range(max(len(t_pos), len(t_neg))):
        tp = float(t_pos[j]) if j < len(t_pos) else inf
        tn = float(t_neg[j]) if j < len(t_neg) else inf
        if tp == tn:
            count += r >= a * tp
        else:  # the sides differ (int's extra negative level): per-element threshold
            count += ((r >= a * tn) & neg) | ((r >= a * tp) & ~neg)
    return count.long()


class _Rows:
    """Per-chunk quantities shared by every candidate type: |w|, absmax, sign, sum of squares."""

    def __init__(self, w: torch.Tensor):  # w: (R, gs) fp32
        self.rows, self.gs = w.shape
        self.u = w.abs().double().flatten()  # (E,) with E = R * gs
        m = w.abs().amax(-1).double()
        self.m = torch.where(m > 0, m, torch.ones_like(m))  # (R,); all-zero rows: any alpha is exact
        self.ratio = 100.0 * self.u / self.m.repeat_interleave(self.gs)  # (E,) 100 * |w| / absmax
        self.neg = (w < 0).flatten()
        self.sq = (self.u * self.u).view(self.rows, self.gs).sum(-1, keepdim=True)  # (R, 1)


def _sse_all_alphas(rows: _Rows, grid: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Squared error of every row at every alpha a in [lo, hi) -> (R, hi - lo) float64.

    Element u = |w| sits past threshold t_j at alpha a iff r >= a * t_j with r = 100 * max(grid) * u / absmax.
    Thresholds passed at a = hi-1 count for every a (a dense sum); the few passed at a = lo but not at
    hi-1 are events, binned by their last a with one histogram per row, then suffix-summed.
    The per-bucket value at a is the sum over buckets >= a - lo + 1 (bucket 0 = never in range).
    """
    r_rows, gs, u, m = rows.rows, rows.gs, rows.u, rows.m
    device = u.device
    steps = hi - lo
    top = float(grid.max())
    r = (top * rows.ratio).float()  # (E,); fp32 is exact enough to bin by
    sides = [tuple(x.to(device) for x in tab) for tab in _side_tables(grid)]
    ops = native_ops_for(u)
    if ops is not None:  # one sweep over the elements (csrc/ant_search.cpp), bit-identical to the eager pass
        (t_pos, v_pos), (t_neg, v_neg) = sides
        b_hi, hist1, hist2 = ops.ant_alpha_events(r, u, rows.neg, t_pos, v_pos, t_neg, v_neg, gs, lo, hi)
    else:
        b_hi, hist1, hist2 = _alpha_events(r, u, rows.neg, sides, r_rows, gs, lo, hi)
    thr, val, length = _stacked_tables(sides)
    v_hi = torch.take(val, rows.neg.long() * length + b_hi)  # (E,) magnitude at a = hi-1
    row_sum = lambda e: e.view(r_rows, gs).sum(-1)  # noqa: E731  (E,) -> (R,)
    base1, base2 = row_sum(u * v_hi), row_sum(v_hi * v_hi)

    def suffix(hist: torch.Tensor) -> torch.Tensor:  # (R, steps): sum over buckets a - lo + 1 .. steps
        hist = hist.view(r_rows, steps + 1)
        return hist.sum(1, keepdim=True) - hist.cumsum(1)[:, :-1]  # total minus prefix: cheaper than flips

    alpha_frac = torch.arange(lo, hi, device=device, dtype=torch.float64) * 0.01  # (steps,)
    s = m[:, None] * alpha_frac / top  # (R, steps) scale at each alpha
    sq = rows.sq
    s1 = base1[:, None] + suffix(hist1)
    s2 = base2[:, None] + suffix(hist2)
    return (sq - 2 * s * s1 + s * s * s2).clamp_min_(0)


def _stacked_tables(sides):
    """Both sides' thresholds and magnitudes padded to one length L and stacked (2L,), so that a lookup is one
    gather at side * L + j; returns (thresholds, magnitudes, L)."""
    length = max(len(sides[0][1]), len(sides[1][1]))
    pad = lambda x, fill: torch.cat([x, x.new_full((length - len(x),), fill)])  # noqa: E731
    thr = torch.cat([pad(sides[0][0], float("inf")), pad(sides[1][0], float("inf"))])  # (2L,), L-1 used per side
    val = torch.cat([pad(sides[0][1], float(sides[0][1][-1])), pad(sides[1][1], float(sides[1][1][-1]))])
    return thr, val, length


def _alpha_events(r, u, neg, sides, r_rows: int, gs: int, lo: int, hi: int):
    """The eager event pass (the reference for ``csrc/ant_search.cpp``): thresholds passed at a = hi-1 per element
    (E,) long, and per row and bucket the sums of u * dv_j and d(v^2)_j over the thresholds crossed inside."""
    device = u.device
    steps = hi - lo
    b_hi = _count_passed(r, neg, sides, hi - 1)  # thresholds passed at a = hi-1 (for every a in range)
    b_lo = _count_passed(r, neg, sides, lo)  # ... and at a = lo (>= b_hi)
    thr, val, length = _stacked_tables(sides)
    base = neg.long() * length  # (E,) offset of each element's side
    # Events: element e crosses thresholds b_hi[e] .. b_lo[e]-1 inside the range; expand them all at once.
    span = b_lo - b_hi  # (E,)
    elem = torch.repeat_interleave(torch.arange(span.numel(), device=device), span)  # (S,)
    first = torch.cumsum(span, 0) - span  # (E,) position of each element's first event
    j = torch.take(b_hi, elem) + (torch.arange(elem.numel(), device=device) - torch.take(first, elem))  # (S,)
    at = torch.take(base, elem) + j  # (S,) index of the crossed threshold in the stacked tables
    v_lo, v_up = torch.take(val, at), torch.take(val, at + 1)  # threshold j lies between v_j and v_{j+1}
    crossing = _crossing(torch.take(r, elem).double(), torch.take(thr, at))
    bucket = (crossing - (lo - 1)).clamp_(0, steps).long() + (elem // gs) * (steps + 1)
    size = r_rows * (steps + 1)
    zeros = lambda: torch.zeros(size, dtype=torch.float64, device=device)  # noqa: E731
    hist1 = zeros().index_add_(0, bucket, torch.take(u, elem) * (v_up - v_lo))  # d(u * v) per (row, bucket)
    hist2 = zeros().index_add_(0, bucket, v_up * v_up - v_lo * v_lo)  # d(v^2) per (row, bucket)
    return b_hi, hist1, hist2


@dataclass
class AntChoice:
    """Result of the search: chosen type per unit, and per type the best alpha and MSE per row/group."""
    types: tuple[str, ...]  # candidate types, in search order
    choice: torch.Tensor  # (N, G) long index into ``types`` (constant for per-tensor granularity)
    alpha: torch.Tensor  # (T, N, G) float64 best alpha per type
    mse: torch.Tensor  # (T, N, G) float64 best mean squared error per type
    granularity: str

    def chosen_names(self) -> list[str]:
        return [self.types[i] for i in self.choice.flatten().tolist()]


def ant_search(weight: torch.Tensor, *, bits: int, group_size: int | None = None, granularity: str = "tensor",
               types: tuple[str, ...] = DEFAULT_TYPES, chunk_elems: int = 1 << 16) -> AntChoice:
    """The type / alpha search of ``ant_quantize``, exposed for reports.

    Rows are searched ``chunk_elems`` weights at a time; each row's result does not depend on the chunking. Why
    64K: every chunk makes a few dozen temporaries of its size (float64 per weight, and per row x alpha), and at
    2**20 weights each is several MB, which glibc maps fresh and the kernel zero-fills page by page on every
    allocation. At 2**16 they are reused from the heap: MiniLM's 37 weights searched in 1.52 s against 3.27 s
    (Zen 4 VM, 1 thread; 2**15 1.6 s, 2**18 2.8 s).
    """
    if not isinstance(chunk_elems, int) or chunk_elems < 1:
        raise ValueError(f"chunk_elems must be a positive int, got {chunk_elems!r}")
    check_weight(weight, bits, group_size)
    if not 3 <= bits <= 8:
        raise ValueError(f"ANT supports bits in 3..8, got {bits}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group" and group_size is None:
        raise ValueError("granularity='group' needs a group_size")
    if not types or any(t not in TYPES for t in types) or len(set(types)) != len(types):
        raise ValueError(f"types must be distinct names from {TYPES}, got {types!r}")
    lo, hi = SEARCH
    if bits > 6:  # the official code falls back to int above 6 bits and narrows the search
        types, lo = ("int",), 95
    n, k = weight.shape[0], weight[0].numel()
    gs = k if group_size is None else group_size
    w = weight.detach().reshape(-1, gs).float()  # (N*G, gs)
    rows_per_chunk = max(1, chunk_elems // gs)
    best_a = {kind: [] for kind in types}
    best_mse = {kind: [] for kind in types}
    grids = {kind: ant_grid(kind, bits) for kind in types}
    for start in range(0, w.shape[0], rows_per_chunk):
        rows = _Rows(w[start:start + rows_per_chunk])
        for kind in types:
            mse = _sse_all_alphas(rows, grids[kind], lo, hi) / gs  # (R, steps)
            value, where = mse.min(-1)  # first minimum, as the official strict '<' update
            best_a[kind].append(rows.m * ((where + lo).double() * 0.01))
            best_mse[kind].append(value)
    alphas = [torch.cat(best_a[kind]).view(n, -1) for kind in types]
    mses = [torch.cat(best_mse[kind]).view(n, -1) for kind in types]
    alpha, mse = torch.stack(alphas), torch.stack(mses)  # (T, N, G)
    if granularity == "tensor":
        score = mse.sum((1, 2))  # (T,)
        choice = torch.full(mse.shape[1:], int(torch.argmin(score)), dtype=torch.long, device=mse.device)
    elif granularity == "channel":
        choice = torch.argmin(mse.sum(2), 0)[:, None].expand(mse.shape[1:]).contiguous()  # (N, G)
    else:
        choice = torch.argmin(mse, 0)  # (N, G)
    return AntChoice(tuple(types), choice, alpha, mse, granularity)


def _nearest_index(y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index into the sorted ``grid`` of the nearest value (ties up; last of equal entries)."""
    values = torch.unique(grid)  # sorted distinct values
    mids = ((values[1:] + values[:-1]) / 2).tolist()  # dyadic: exact in fp32
    last = torch.searchsorted(grid, values, right=True) - 1  # last grid index holding each distinct value
    passed = torch.zeros(y.shape, dtype=torch.int64, device=y.device)
    for mid in mids:  # count the midpoints at or below y (as bucketize(right=True); a few cheap passes)
        passed += y >= mid
    return last.to(y.device)[passed]


def ant_quantize(weight: torch.Tensor, *, bits: int, group_size: int | None = None, granularity: str = "tensor",
                 types: tuple[str, ...] = DEFAULT_TYPES, scale_dtype: torch.dtype = torch.float16,
                 choice: AntChoice | None = None) -> QuantizedWeight:
    """ANT-quantize a Linear (N, K) or conv (O, I, kh, kw) weight: codebook indices, one scale per row/group."""
    if scale_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"scale_dtype must be float16, bfloat16 or float32, got {scale_dtype}")
    if choice is None:
        choice = ant_search(weight, bits=bits, group_size=group_size, granularity=granularity, types=types)
    n, k = weight.shape[0], weight[0].numel()
    gs = k if group_size is None else group_size
    w = weight.detach().reshape(n, k // gs, gs).float()  # (N, G, gs)
    grids = torch.stack([ant_grid(kind, bits) for kind in choice.types]).to(w.device)  # (T, 2**bits)
    tops = grids.amax(-1)  # (T,)
    alpha = choice.alpha.gather(0, choice.choice[None]).squeeze(0)  # (N, G)
    scale = alpha / tops[choice.choice]  # (N, G) float64
    if scale_dtype != torch.float32:
        finfo = torch.finfo(scale_dtype)
        if float(scale.max()) > finfo.max:
            raise ValueError(f"weights too large for {scale_dtype} scales; pass scale_dtype=torch.float32")
        scale = scale.clamp_min(finfo.tiny)
    scale = scale.to(scale_dtype)
    y = w / scale.float().unsqueeze(-1)  # (N, G, gs)
    used = torch.unique(choice.choice).tolist()
    if len(used) == 1:
        codes = _nearest_index(y, grids[used[0]])
    else:  # each type codes only the rows / groups that chose it (one rounding pass in all, not one per type)
        codes = torch.empty(y.shape, dtype=torch.int64, device=y.device)
        for t in used:
            mask = choice.choice == t  # (N, G)
            codes[mask] = _nearest_index(y[mask], grids[t])  # (count, gs)
    codes = codes.to(torch.uint8)
    if len(used) == 1:
        codebook, fmt = grids[used[0]].float(), choice.types[used[0]]
    else:  # mixed types: one table per row / group (see the module docstring)
        codebook, fmt = grids[choice.choice].float(), "ant-mixed"  # (N, G, 2**bits)
        if choice.granularity == "channel" or gs == k:
            codebook = codebook[:, 0]  # (N, 2**bits)
    return QuantizedWeight(codes.reshape(weight.shape), scale, None, bits, group_size, codebook, fmt)
