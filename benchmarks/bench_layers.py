"""Micro benchmark of the lean layers: bytes saved for backward and fwd+bwd time, stock vs lean.

Each case is one fused chain at BERT-base-like sizes (H=768, I=3072; LLaMA-like I=2048), stock PyTorch /
Hugging Face formulas against leanformer.ops, measured in the same process. Saved bytes are counted per
unique storage with saved_tensors_hooks, parameters excluded (activation memory: what grows with
batch x sequence; the tests count parameters too, the difference is the same).

    python benchmarks/bench_layers.py [--quick]      -> benchmarks/results/layers.csv
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows, time_fn  # noqa: E402

from leanformer.ops import (lean_activation, lean_dropout, lean_gated_act, lean_gelu, lean_layer_norm,  # noqa: E402
                            lean_linear, lean_rms_norm, lean_softmax_dropout_matmul)
from leanformer.ops.activation import act_forward  # noqa: E402
from leanformer.ops.approx import lean_gelu_from_output, lean_layer_norm_from_output  # noqa: E402
from leanformer.profile import saved_bytes as count_saved  # noqa: E402

MiB = 2 ** 20


_PARAMS: list[torch.Tensor] = []  # every parameter the cases create: not activation memory


def saved_bytes(fn, *args) -> int:
    """Bytes autograd saves running ``fn(*args)``: once per storage, parameter storages excluded."""
    return count_saved(fn, *args, exclude=tuple(_PARAMS))[1]


def _p(*shape, scale=0.02, offset=0.0):
    p = torch.nn.Parameter(torch.randn(*shape) * scale + offset)
    _PARAMS.append(p)
    return p


def cases(B: int, S: int):
    H, I, IL, NH = 768, 3072, 2048, 12
    x = torch.randn(B, S, H, requires_grad=True)
    ln_w, ln_b = _p(H, offset=1.0), _p(H)
    Wq, Wk, Wv = _p(H, H), _p(H, H), _p(H, H)
    W1, W2 = _p(I, H), _p(H, I)
    C1, C2, c1b, c2b = _p(H, I), _p(I, H), _p(I), _p(H)      # HF Conv1D layout (in, out)
    Wg, Wu, Wd = _p(IL, H), _p(IL, H), _p(H, IL)
    a = torch.randn(B, S, I, requires_grad=True)
    s = torch.randn(B, NH, S, S, requires_grad=True)
    v = torch.randn(B, NH, S, H // NH, requires_grad=True)

    def hf_rms(t, w):
        h = t.to(torch.float32)
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(t.dtype)

    def ln_qkv(ln, lin):
        def f(t):
            y = ln(t, (H,), ln_w, ln_b)
            return lin(y, Wq) + lin(y, Wk) + lin(y, Wv)
        return f

    yield ("layernorm->qkv", ln_qkv(F.layer_norm, F.linear), ln_qkv(lean_layer_norm, lean_linear), x)
    yield ("layernorm(approx, from output)->qkv", ln_qkv(F.layer_norm, F.linear),
           ln_qkv(lean_layer_norm_from_output, lean_linear), x)
    yield ("gelu(erf)->linear", lambda t: F.linear(F.gelu(t), W2), lambda t: lean_linear(lean_gelu(t), W2), a)
    yield ("gelu(approx, from output)->linear", lambda t: F.linear(F.gelu(t), W2),
           lambda t: lean_linear(lean_gelu_from_output(t), W2), a)
    yield ("gpt2 gelu_new->conv1d", lambda t: lean_linear(act_forward("gelu_new", t), C2, transposed=True),
           lambda t: lean_linear(lean_activation(t, "gelu_new"), C2, transposed=True), a)
    yield ("bert ffn ln->W1->gelu->W2",
           lambda t: F.linear(F.gelu(F.linear(F.layer_norm(t, (H,), ln_w, ln_b), W1)), W2),
           lambda t: lean_linear(lean_gelu(lean_linear(lean_layer_norm(t, (H,), ln_w, ln_b), W1)), W2), x)
    yield ("gpt2 mlp c_fc->gelu_new->c_proj",
           lambda t: torch.addmm(torch.zeros(H), act_forward("gelu_new", torch.addmm(
               torch.zeros(I), t.view(-1, H), C1)), C2),
           lambda t: lean_linear(lean_activation(lean_linear(t, C1, c1b, transposed=True), "gelu_new"), C2, c2b,
                                 transposed=True), x)
    yield ("llama rms->gate/up->silu*u->down",
           lambda t: (lambda h: F.linear(F.silu(F.linear(h, Wg)) * F.linear(h, Wu), Wd))(hf_rms(t, ln_w)),
           lambda t: (lambda h: lean_linear(lean_gated_act(lean_linear(h, Wg), lean_linear(h, Wu)), Wd))(
               lean_rms_norm(t, ln_w)), x)
    yield ("dropout(p=0.1)", lambda t: F.dropout(t, 0.1), lambda t: lean_dropout(t, 0.1), x)
    yield ("softmax->dropout->@V", lambda t: torch.matmul(F.dropout(F.softmax(t, -1), 0.1), v),
           lambda t: lean_softmax_dropout_matmul(t, v, 0.1), s)


def step(fn, t):
    def run():
        out = fn(t)
        out.backward(torch.ones_like(out))
    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (default 1: on a shared 2-core machine more threads mostly measure "
                         "OpenMP waits; both providers run with the same setting)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    B, S = (2, 64) if args.quick else (4, 128)
    reps, rounds = (3, 3) if args.quick else (5, 5)
    torch.manual_seed(0)
    rows = Rows("layers")
    cfg = {"B": B, "S": S, "H": 768, "dtype": "float32", "threads": torch.get_num_threads()}
    print(f"lean layers, B={B} S={S} fp32, {torch.get_num_threads()} threads; activation bytes saved for backward "
          f"(parameters excluded), fwd+bwd time (median of paired runs; time x = median lean/stock pair ratio)")
    print(f"{'chain':40s} {'stock MiB':>10s} {'lean MiB':>9s} {'bytes x':>8s} {'stock ms':>9s} {'lean ms':>8s} "
          f"{'time x':>7s} [p20-p80]")
    for name, stock, lean, t in cases(B, S):
        nb_s, nb_l = saved_bytes(stock, t), saved_bytes(lean, t)
        # interleave to share the machine's noise; the ratio is what we report
        # Paired runs (stock, lean, stock, lean, ...) with the per-pair ratio: on a shared machine the
        # load drifts between runs, and a pair shares it. Report the median ratio and median times.
        n = 3 if "approx" in name else rounds * reps    # the float64 GELU inversion is ~16x slower
        time_fn(step(stock, t), warmup=1, reps=1)
        time_fn(step(lean, t), warmup=1, reps=1)
        pairs = [(time_fn(step(stock, t), warmup=0, reps=1)[1], time_fn(step(lean, t), warmup=0, reps=1)[1])
                 for _ in range(n)]
        ts, tl = sorted(a for a, _ in pairs), sorted(b for _, b in pairs)
        ratios = sorted(b / a for a, b in pairs)
        q = lambda v, f: v[min(len(v) - 1, int(f * len(v)))]  # noqa: E731
        ps, pl, ratio = statistics.median(ts), statistics.median(tl), statistics.median(ratios)
        for prov, nb, p50, tt in (("stock", nb_s, ps, ts), ("leanformer", nb_l, pl, tl)):
            rows.add(name, prov, "saved_bytes", "MiB", nb / MiB, config=cfg)
            rows.add(name, prov, "fwd_bwd_time", "ms", p50 * 1e3, p20=q(tt, 0.2) * 1e3, p80=q(tt, 0.8) * 1e3,
                     config=cfg)
        rows.add(name, "leanformer/stock", "saved_bytes_ratio", "x", nb_l / nb_s, config=cfg)
        rows.add(name, "leanformer/stock", "time_ratio", "x", ratio, p20=q(ratios, 0.2), p80=q(ratios, 0.8),
                 config=cfg)
        print(f"{name:40s} {nb_s / MiB:10.2f} {nb_l / MiB:9.2f} {nb_l / nb_s:8.3f} {ps * 1e3:9.2f} {pl * 1e3:8.2f} "
              f"{ratio:7.3f} [{q(ratios, 0.2):.2f}-{q(ratios, 0.8):.2f}]")
        t.grad = None
    path = rows.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
