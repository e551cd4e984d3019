"""SQuant and ANT on a small CNN, where SQuant's kernel-wise (3x3) flips apply: scikit-learn's digits.

A 3-conv + 1-linear network is trained on 8x8 digit images (1,797 of them; a fixed 2/3 / 1/3 split). Only
its weights are quantized: every layer, per output channel (SQuant's and ANT's setting), fake-quant with
the dequantized weights. Activations stay fp32. Test accuracy is reported for FP32, the plain baselines and
the two methods at 4 and 3 bits, as a mean over ``--seeds`` independently trained networks, together with
the logits' SQNR against FP32 (dB), which resolves differences that 599 test images cannot (1 image = 0.17 %).

    python benchmarks/bench_squant_cnn.py [--quick] [--seeds 5]

Writes ``benchmarks/results/squant_cnn.csv`` and prints a table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows  # noqa: E402

from leanformer.quant.ant import ant_quantize  # noqa: E402
from leanformer.quant.rtn import quantize_rtn  # noqa: E402
from leanformer.quant.squant import squant_quantize  # noqa: E402


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):  # (B, 1, 8, 8)
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)  # (B, 32, 4, 4)
        x = F.relu(self.c3(x))
        return self.fc(x.flatten(1))


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(len(y) * 2 / 3)
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def train(seed: int, xtr, ytr, epochs: int) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


@torch.no_grad()
def logit_sqnr(model, ref_logits, x) -> float:
    """Output fidelity in dB: 10 log10 |z|^2 / |z - z_q|^2 over the test set (finer than accuracy)."""
    return float(10 * torch.log10(ref_logits.pow(2).sum() / (model(x) - ref_logits).pow(2).sum().clamp_min(1e-30)))


METHODS = {
    "rtn-sym": lambda w, b: quantize_rtn(w, bits=b, symmetric=True, scale_dtype=torch.float32),
    "rtn-asym": lambda w, b: quantize_rtn(w, bits=b, symmetric=False, scale_dtype=torch.float32),
    "rtn-mse-clip": lambda w, b: quantize_rtn(w, bits=b, symmetric=True, clip_search=True, scale_dtype=torch.float32),
    # SQuant's own baseline: the same min/max scale with an integer zero point, plain rounding (mode squant-e)
    "rtn-asym-int-zero": lambda w, b: squant_quantize(w, bits=b, symmetric=False, mode="squant-e",
                                                      scale_dtype=torch.float32),
    "squant-sym": lambda w, b: squant_quantize(w, bits=b, symmetric=True, scale_dtype=torch.float32),
    "squant-asym (official)": lambda w, b: squant_quantize(w, bits=b, symmetric=False, scale_dtype=torch.float32),
    "squant-asym-K only": lambda w, b: squant_quantize(w, bits=b, symmetric=False, mode="squant-k",
                                                       scale_dtype=torch.float32),
    "squant-asym-C only": lambda w, b: squant_quantize(w, bits=b, symmetric=False, mode="squant-c",
                                                       scale_dtype=torch.float32),
    "ant-tensor": lambda w, b: ant_quantize(w, bits=b, granularity="tensor", scale_dtype=torch.float32),
    "ant-channel": lambda w, b: ant_quantize(w, bits=b, granularity="channel", scale_dtype=torch.float32),
}


@torch.no_grad()
def fake_quant(model: DigitsCNN, method, bits: int):
    """A copy of ``model`` whose conv/linear weights are replaced by their dequantized codes."""
    import copy

    q = copy.deepcopy(model)
    formats = []
    for mod in q.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            qw = method(mod.weight, bits)
            mod.weight.copy_(qw.dequantize())
            formats.append(qw.format)
    return q, formats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, fewer epochs")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared box)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = 2 if args.quick else args.seeds
    epochs = 10 if args.quick else args.epochs
    xtr, ytr, xte, yte = load_digits_split()
    rows = Rows("squant_cnn")
    results: dict[tuple[str, int], list[float]] = {}
    fidelity: dict[tuple[str, int], list[float]] = {}
    times: dict[str, list[float]] = {}
    ant_formats: dict[tuple[str, int], list[str]] = {}
    for seed in range(seeds):
        model = train(seed, xtr, ytr, epochs)
        results.setdefault(("fp32", 32), []).append(accuracy(model, xte, yte))
        with torch.no_grad():
            ref_logits = model(xte)
        for bits in (4, 3):
            for name, method in METHODS.items():
                t0 = time.perf_counter()
                q, formats = fake_quant(model, method, bits)
                times.setdefault(name, []).append(time.perf_counter() - t0)
                results.setdefault((name, bits), []).append(accuracy(q, xte, yte))
                fidelity.setdefault((name, bits), []).append(logit_sqnr(q, ref_logits, xte))
                if name.startswith("ant"):
                    ant_formats.setdefault((name, bits), []).extend(formats)
    config = {"seeds": seeds, "epochs": epochs, "n_test": len(yte), "granularity": "per-channel, all layers",
              "activations": "fp32"}
    print(f"digits CNN (conv3x3 x3 + linear), weights only, per channel; mean (min..max) test accuracy over "
          f"{seeds} seeds, {len(yte)} test images")
    print(f"{'method':26s} {'bits':>4s} {'acc %':>7s} {'min..max':>13s} {'vs RTN-int0':>11s} {'logit dB':>8s} "
          f"{'quant ms':>9s}")
    for (name, bits), accs in results.items():
        mean = statistics.mean(accs)
        base = statistics.mean(results.get(("rtn-asym-int-zero", bits), accs))
        ms = 1000 * statistics.median(times.get(name, [0.0]))
        db = statistics.mean(fidelity.get((name, bits), [float("inf")]))
        print(f"{name:26s} {bits:4d} {100 * mean:7.2f} {100 * min(accs):6.2f}..{100 * max(accs):5.2f} "
              f"{100 * (mean - base):+11.2f} {db:8.2f} {ms:9.1f}")
        if (name, bits) in fidelity:
            rows.add("digits_cnn", name, "logit_sqnr", "dB", db, x_name="bits", x_value=bits,
                     p20=min(fidelity[name, bits]), p80=max(fidelity[name, bits]), config=config)
        rows.add("digits_cnn", name, "accuracy", "fraction", mean, x_name="bits", x_value=bits,
                 p20=min(accs), p80=max(accs), config=config)
        if name in times:
            rows.add("digits_cnn", name, "quant_time", "s", statistics.median(times[name]), x_name="bits",
                     x_value=bits, config=config)
    for (name, bits), fmts in ant_formats.items():
        counts = {f: fmts.count(f) for f in sorted(set(fmts))}
        print(f"{name} {bits}-bit chosen types over layers x seeds: {counts}")
    print("wrote", rows.write())


if __name__ == "__main__":
    main()
