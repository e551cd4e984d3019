"""Weight quantization on all-MiniLM-L6-v2: fidelity, size, quantization time and CPU latency.

Every method is measured in the same run as the FP32 and bf16 baselines (interleaved timing rounds, medians)
and the peers that work on CPU here (torchao 0.18, HQQ 0.2.8). Fidelity: cosine of mean-pooled, normalised
sentence embeddings vs FP32 on 40 built-in sentences; NN = nearest-neighbour agreement.

    python benchmarks/bench_quant.py [--quick] [--threads 1] [--methods w8,w4g64]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Rows, keep_freed_memory_mapped  # noqa: E402

from leanformer.models import build_model, minilm_dir  # noqa: E402
from leanformer.quant import (ANTConfig, EmbeddingConfig, MixedPrecisionConfig, SQuantConfig, W4A8Config,  # noqa: E402
                              W8A8Config, WeightOnlyConfig, quantize_, save_quantized, set_activation_dtype_)
from leanformer.quant.fidelity import SENTENCES, compare, embed  # noqa: E402

W8 = WeightOnlyConfig(bits=8, group_size=None, symmetric=True, clip_search=False, refine_steps=0)
W4G64 = WeightOnlyConfig(bits=4, group_size=64, act_weighting=True)
EMB8, EMB4 = EmbeddingConfig(bits=8), EmbeddingConfig(bits=4, group_size=16, symmetric=False, refine_steps=3)


def _ours(*configs, act_dtype=None):
    def apply(model):
        for cfg in configs:
            quantize_(model, cfg)
        if act_dtype is not None:  # run the float remainder (LayerNorm, attention, GELU) in bf16 too
            set_activation_dtype_(model, act_dtype)
        return model
    return apply


@contextlib.contextmanager
def _policy_set(**fields):
    """Kernel-policy fields changed for the duration of a block (e.g. the native ops off)."""
    from leanformer.quant import get_policy, set_policy

    before = {k: getattr(get_policy(), k) for k in fields}
    set_policy(**fields)
    try:
        yield
    finally:
        set_policy(**before)


class _WithPolicy(torch.nn.Module):
    """Runs the wrapped quantized model with some kernel-policy fields changed."""

    def __init__(self, inner, **fields):
        super().__init__()
        self.inner, self.fields = inner, fields

    def forward(self, *args, **kwargs):
        with _policy_set(**self.fields):
            return self.inner(*args, **kwargs)


def _policy(apply, **fields):
    return lambda model: _WithPolicy(apply(model), **fields)


def _short_attention_only(model):
    from leanformer.quant.attention import use_short_attention_

    if not use_short_attention_(model):
        raise RuntimeError("the model is not on SDPA attention")
    return model


METHODS = {  # name -> (provider, description, function model -> model)
    "w8": ("leanformer", "int8 per-channel weights, int8 embeddings", _ours(W8, EMB8)),
    "w8_emb4": ("leanformer", "int8 per-channel weights, int4 g16 embeddings", _ours(W8, EMB4)),
    "w4g64_rtn": ("leanformer", "int4 sym g64 RTN (plain)", _ours(WeightOnlyConfig(bits=4, group_size=64, symmetric=True,
                                                                                    clip_search=False, refine_steps=0), EMB8)),
    "w4g64_mse": ("leanformer", "int4 asym g64 + MSE clip + LS refine", _ours(WeightOnlyConfig(bits=4, group_size=64), EMB8)),
    "w4g64": ("leanformer", "w4g64_mse weighted by random-token input moments", _ours(W4G64, EMB8)),
    "w4g64_eager": ("leanformer", "w4g64 with the native fused ops (and so the AMX kernels) off",
                    _policy(_ours(W4G64, EMB8), native=False)),
    "w4g64_dequant": ("leanformer", "w4g64 with the AMX int4 kernel off (unpack to bf16 + oneDNN GEMM)",
                      _policy(_ours(W4G64, EMB8), amx_w4=False)),
    "w4g64_fused": ("leanformer", "w4g64 with fuse_feed_forward_ (off by default for weight-only)",
                    _ours(W4G64.replace(fuse=True), EMB8)),
    "w4g32": ("leanformer", "same at g32", _ours(W4G64.replace(group_size=32), EMB8)),
    "mixed8.5": ("leanformer", "w4g64 / int8 mixed, budget 8.5 MB", _ours(MixedPrecisionConfig(low=W4G64, budget_mb=8.5), EMB8)),
    "mixed8.5_emb4": ("leanformer", "mixed8.5 with int4 g16 embeddings",
                      _ours(MixedPrecisionConfig(low=W4G64, budget_mb=8.5), EMB4)),
    "w8a8": ("leanformer", "dynamic W8A8 per-token: the fused int8 kernel (AMX, else AVX512-VNNI) with the rescale "
                           "(+ GELU and the next quantization in the FFN) fused, else oneDNN int8 matmul "
                           "(torch._int_mm under 128 rows or where oneDNN's probe fails)", _ours(W8A8Config(), EMB8)),
    "w8a8_eager": ("leanformer", "w8a8 with the native fused ops, AMX and oneDNN off (torch._int_mm)",
                   _policy(_ours(W8A8Config(), EMB8), native=False, amx_int8=False, onednn_int8=False)),
    "w8a8_unfused": ("leanformer", "w8a8 without fuse_feed_forward_ (GELU and its quantization as separate passes)",
                     _ours(W8A8Config(fuse=False), EMB8)),
    "w8a8_onednn": ("leanformer", "w8a8 with the fused int8 kernels off: oneDNN's packed int8 matmul where its "
                                  "first-use probe passes, else torch._int_mm (the header line says which)",
                    _policy(_ours(W8A8Config(), EMB8), amx_int8=False)),
    "w8a8_intmm": ("leanformer", "w8a8 with torch._int_mm instead of the fused int8 kernels / oneDNN",
                   _policy(_ours(W8A8Config(), EMB8), amx_int8=False, onednn_int8=False)),
    "w4a8": ("leanformer", "W4A8: the int4 g32 weights of w4g64's quantizer, int8 per-token activations, on the "
                           "W8A8 int8 kernels (codes unpacked to int8 per call)", _ours(W4A8Config(), EMB8)),
    "w4a8_g64": ("leanformer", "w4a8 at g64", _ours(W4A8Config(group_size=64), EMB8)),
    "w4a8_unfused": ("leanformer", "w4a8 without the fused feed-forward and residual-norm blocks",
                     _ours(W4A8Config(fuse=False), EMB8)),
    "w8a8_stock_layers": ("leanformer", "w8a8 with transformers' own BertLayer call path "
                                        "(set_policy(fast_layers=False))",
                          _policy(_ours(W8A8Config(), EMB8), fast_layers=False)),
    "w8a8_module_calls": ("leanformer", "w8a8 with each BERT layer's modules called one by one instead of the "
                                        "fused-int8 layer sequence (set_policy(int8_layers=False))",
                          _policy(_ours(W8A8Config(), EMB8), int8_layers=False)),
    "w8a8_layer_calls": ("leanformer", "w8a8 with each BERT layer's native sequence called from Python instead of "
                                       "the whole encoder in one native call (set_policy(int8_encoder=False))",
                         _policy(_ours(W8A8Config(), EMB8), int8_encoder=False)),
    "w8a8_stock_attention": ("leanformer", "w8a8 with torch's SDPA attention (short_attention=False)",
                             _ours(W8A8Config(short_attention=False), EMB8)),
    "w4g64_stock_attention": ("leanformer", "w4g64 with torch's SDPA attention (short_attention=False)",
                              _ours(W4G64.replace(short_attention=False), EMB8)),
    "fp32_short_attention": ("leanformer", "the fp32 model, only switched to the short-sequence attention kernel "
                             "(what attention alone gains)", _short_attention_only),
    "w8+bf16act": ("leanformer", "w8 with bf16 activations", _ours(W8, EMB8, act_dtype=torch.bfloat16)),
    "w4g64+bf16act": ("leanformer", "w4g64 with bf16 activations", _ours(W4G64, EMB8, act_dtype=torch.bfloat16)),
    "mixed8.5+bf16act": ("leanformer", "mixed8.5 with bf16 activations",
                         _ours(MixedPrecisionConfig(low=W4G64, budget_mb=8.5), EMB8, act_dtype=torch.bfloat16)),
    "w8a8+bf16act": ("leanformer", "w8a8 with bf16 activations", _ours(W8A8Config(), EMB8, act_dtype=torch.bfloat16)),
    "squant_g64": ("leanformer", "SQuant int4 sym g64", _ours(SQuantConfig(bits=4, group_size=64), EMB8)),
    "ant_g64": ("leanformer", "ANT int4 g64 (per tensor type)", _ours(ANTConfig(bits=4, group_size=64), EMB8)),
    "ant_g64_ch": ("leanformer", "ANT int4 g64 (per channel type)",
                   _ours(ANTConfig(bits=4, group_size=64, granularity="channel"), EMB8)),
    "ant_g64_ch_dequant": ("leanformer", "ant_g64_ch with the AMX int4 codebook kernel off (table lookup to bf16 "
                           "+ oneDNN GEMM)",
                           _policy(_ours(ANTConfig(bits=4, group_size=64, granularity="channel"), EMB8), amx_w4=False)),
}


def _torchao(kind):
    def apply(model):
        from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8WeightOnlyConfig)
        from torchao.quantization import quantize_ as ao_quantize_

        cfg = {"int8wo": Int8WeightOnlyConfig(), "int8dyn": Int8DynamicActivationInt8WeightConfig(),
               "int4wo": Int4WeightOnlyConfig(group_size=64)}[kind]
        if kind == "int4wo":
            model = model.to(torch.bfloat16)
        ao_quantize_(model, cfg)
        return model
    return apply


def _hqq(model):
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    HQQLinear.set_backend(HQQBackend.PYTORCH)
    cfg = BaseQuantizeConfig(nbits=4, group_size=64, axis=1)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear):
            model.set_submodule(name, HQQLinear(mod, cfg, compute_dtype=torch.float32, device="cpu"))
    return model


PEERS = {
    "torchao_int8wo": ("torchao", "Int8WeightOnlyConfig", _torchao("int8wo")),
    "torchao_int8dyn": ("torchao", "Int8DynamicActivationInt8WeightConfig", _torchao("int8dyn")),
    "torchao_int4wo": ("torchao", "Int4WeightOnlyConfig g64 (bf16 model)", _torchao("int4wo")),
    "hqq_4bit_g64": ("hqq", "HQQLinear 4-bit g64, PyTorch backend", _hqq),
}


def _has_quantized(model) -> bool:
    from leanformer.quant import QuantizedLinear

    return any(isinstance(m, QuantizedLinear) for m in model.modules())


def _size_mb(model, provider) -> float:
    model = getattr(model, "inner", model)
    with tempfile.TemporaryDirectory() as tmp:
        if provider == "leanformer" and _has_quantized(model):
            path = save_quantized(model, Path(tmp) / "ck")
            return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".json")) / 1e6
        path = Path(tmp) / "model.pt"  # peers: their documented torch.save path (safetensors fails, see docs)
        torch.save(model.state_dict(), path)
        return path.stat().st_size / 1e6


def _interleaved(fns: dict, reps: int) -> dict:
    """Seconds of each fn per round, timed in interleaved rounds so machine noise hits all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _round_ratios(times: dict, base: str, k: str) -> list:
    """base / k per round, each ratio taken within one round: the load on this shared machine drifts by 10-30 %
    over minutes, and a per-round ratio cancels what both runs of a round see."""
    return [b / q for b, q in zip(times[base], times[k])]


def _speedup(times: dict, base: str, k: str) -> float:
    """Median over rounds of base / k (``_round_ratios``)."""
    return statistics.median(_round_ratios(times, base, k))


def _median(times: dict) -> dict:
    return {k: statistics.median(v) for k, v in times.items()}


def ab_rounds(base, bf16, built: dict, batch, reps: int, rows: Rows) -> None:
    """fp32, bf16 and every built model timed in the same rounds; per model the median and interquartile range
    of the per-round fp32 / model time ratio."""
    fns = {"fp32": lambda: base(**batch), "bf16": lambda: bf16(**batch)}
    fns.update({name: (lambda m=model: m(**batch)) for name, (_, model) in built.items()})
    probes = _machine_probes()
    times = _interleaved({**fns, **probes}, reps)
    print(f"\ninterleaved A/B, batch 32, {reps} rounds: speed-up vs fp32, median (interquartile range)")
    for name in fns:
        if name == "fp32":
            continue
        q1, med, q3 = statistics.quantiles(_round_ratios(times, "fp32", name), n=4)
        print(f"  {name:22s} {med:.2f}x ({q1:.2f}-{q3:.2f})  {statistics.median(times[name]) * 1e3:.1f} ms")
        provider = built[name][0] if name in built else "torch"
        rows.add("minilm", provider, "ab_speedup_b32_vs_fp32", "x", med,
                 config={"method": name, "rounds": reps, "q1": q1, "q3": q3})
    print(f"  fp32 {statistics.median(times['fp32']) * 1e3:.1f} ms")
    if probes:
        _report_probes(times, [n for n in fns if n != "fp32"], rows)


def _machine_probes() -> dict:
    """Two fixed products timed in every A/B round: MiniLM's FFN-in shape (576x384 @ 384x1536) as fp32 F.linear
    and on leanformer's int8 kernel (AMX tiles, or AVX512-VNNI; no GELU). Their ratio says how much of the int8
    unit this round had: on the Sapphire Rapids VM it swung by up to ~3x while fp32 moved far less, and the
    quantized models' speed-ups followed."""
    from leanformer.quant import amx

    if not amx.int8_kernel_available():
        return {}
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(576, 384, generator=gen), torch.randn(1536, 384, generator=gen)
    xq = torch.randint(-128, 128, (576, 384), dtype=torch.int8, generator=gen)
    packed = amx.pack_amx_weight(torch.randint(-128, 128, (1536, 384), dtype=torch.int8, generator=gen))
    rs, cs = torch.rand(576, 1, generator=gen), torch.rand(1536, generator=gen)
    return {"probe_fp32": lambda: torch.nn.functional.linear(x, w),
            "probe_amx": lambda: amx.amx_int8_linear(xq, rs, packed, cs)}


def _report_probes(times: dict, names: list, rows: Rows) -> None:
    """The per-round probe ratio, and each model's median speed-up in the rounds where the AMX unit was
    faster (probe ratio above its median) and slower."""
    probe = _round_ratios(times, "probe_fp32", "probe_amx")
    cut = statistics.median(probe)
    q1, _, q3 = statistics.quantiles(probe, n=4)
    from leanformer.quant import amx

    kernel = amx.int8_kernel().upper()
    print(f"  machine probe (FFN-in product, fp32 / {kernel} int8 time per round): median {cut:.1f}x ({q1:.1f}-{q3:.1f})")
    rows.add("minilm", "machine", "probe_fp32_over_amx", "x", cut, config={"q1": q1, "q3": q3})
    for name in names:
        ratios = _round_ratios(times, "fp32", name)
        fast = statistics.median([r for r, p in zip(ratios, probe) if p >= cut])
        slow = statistics.median([r for r, p in zip(ratios, probe) if p < cut])
        print(f"    {name:22s} {fast:.2f}x in the rounds with the faster int8 unit, {slow:.2f}x in the others")
        rows.add("minilm", "machine", "ab_speedup_by_probe", "x", fast, config={"method": name, "half": "faster_amx"})
        rows.add("minilm", "machine", "ab_speedup_by_probe", "x", slow, config={"method": name, "half": "slower_amx"})


def _run_with(mod, x, **fields):
    with _policy_set(**fields):
        return mod(x)


def kernel_sweep(rows: Rows, reps: int) -> None:
    """One MiniLM FFN-in layer (384 -> 1536): every kernel path against fp32 / bf16 F.linear, by row count."""
    from leanformer.quant import QuantizedLinear, quantize_rtn, set_policy
    from leanformer.quant.amx_w4 import amx_w4_available
    from leanformer.quant.kernels import _amx_w4_ok, _int4pack_ok, _int8pack_ok, fast_bf16_cpu

    lin = torch.nn.Linear(384, 1536)
    mods = {
        "int8": QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8)),
        "int4_g64": QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=4, group_size=64, symmetric=False)),
        "w8a8": QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8),
    }
    lin_bf16 = copy.deepcopy(lin).to(torch.bfloat16)
    set_policy(share_prepared_inputs=False)  # one x is timed over and over: each call must prepare it afresh
    print("\nkernel sweep, 384 -> 1536 (ms; x = speed-up vs fp32 F.linear)")
    for m in (1, 4, 8, 12, 16, 24, 64, 256, 640):
        x = torch.randn(m, 384)
        fns = {"fp32": lambda: lin(x), "bf16": lambda: lin_bf16(x.to(torch.bfloat16))}
        for fmt, mod in mods.items():
            paths = ["w8a8"] if fmt == "w8a8" else ["dequant"]
            if fast_bf16_cpu() and _int8pack_ok(mod):
                paths.append("int8pack")
            if fast_bf16_cpu() and _int4pack_ok(mod):
                paths.append("int4pack")
            if _amx_w4_ok(mod) and amx_w4_available():
                paths.append("amx_w4")
            for path in paths:
                fns[f"{fmt}:{path}"] = (lambda mod=mod, path=path: mod(x, kernel=path))
            fns[f"{fmt}:auto"] = (lambda mod=mod: mod(x))
        fns["w8a8:onednn"] = lambda: _run_with(mods["w8a8"], x, amx_int8=False)  # oneDNN's packed matmul
        fns["w8a8:int_mm"] = lambda: _run_with(mods["w8a8"], x, amx_int8=False, onednn_int8=False)
        with torch.no_grad():
            times = _interleaved(fns, reps)
        med = _median(times)
        line = " ".join(f"{k}={v * 1e3:.3f}({_speedup(times, 'fp32', k):.2f}x)" for k, v in med.items())
        print(f"M={m:4d} {line}")
        for k, v in med.items():
            rows.add("linear_384x1536", k.split(":")[0], "latency", "ms", v * 1e3, mode="forward",
                     x_name="rows", x_value=m, config={"kernel": k, "speedup_vs_fp32": _speedup(times, "fp32", k)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer methods and timing rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=None, help="comma-separated subset of: " + ",".join([*METHODS, *PEERS]))
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-kernel row sweep")
    ap.add_argument("--reps", type=int, default=None, help="timing rounds per method (default 9, --quick 3); more "
                    "rounds span more of the machine's load drift")
    ap.add_argument("--keep-memory-mapped", action="store_true",
                    help="glibc: keep freed memory mapped (mallopt), for every model alike: fewer page faults on the "
                    "large activations; see docs/quant.md")
    ap.add_argument("--ab", action="store_true",
                    help="also time fp32, bf16 and every chosen model in the same interleaved rounds at batch 32 "
                    "(the comparison to trust between variants: separately timed rows drift apart on a shared VM)")
    ap.add_argument("--csv", default="quant", help="results file name under benchmarks/results/ (default quant)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_memory_mapped and not keep_freed_memory_mapped():
        print("--keep-memory-mapped: mallopt is not available here (not glibc?); running without", file=sys.stderr)
    from transformers import AutoTokenizer

    reps = args.reps or (3 if args.quick else 9)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    base = build_model("minilm", task="base").eval()
    ref = embed(base, tok, SENTENCES)
    batch32 = tok(SENTENCES[:32], padding=True, return_tensors="pt")
    batch1 = tok(SENTENCES[7:8], return_tensors="pt")
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    rows = Rows(args.csv)
    chosen = {**METHODS, **PEERS}
    if args.methods:
        unknown = set(args.methods.split(",")) - set(chosen)
        if unknown:
            ap.error(f"unknown methods: {sorted(unknown)}")
        chosen = {k: v for k, v in chosen.items() if k in args.methods.split(",")}
    elif args.quick:
        chosen = {k: chosen[k] for k in ("w8", "w4g64", "w4g64+bf16act", "w8a8", "w8a8+bf16act", "torchao_int8dyn",
                                         "hqq_4bit_g64")}
    print(f"MiniLM-L6, {args.threads} thread(s), batch-32 = {tuple(batch32['input_ids'].shape)} tokens, "
          f"torch {torch.__version__}")
    from leanformer.quant import amx, amx_w4, onednn

    print(f"kernels here: fused int8 {amx.int8_kernel() or 'none'}; oneDNN int8 {onednn.onednn_int8_status()}; "
          f"AMX int4 {amx_w4.amx_w4_status()}")
    fp32_linear_mb = sum(m.weight.numel() * 4 for m in base.modules() if isinstance(m, torch.nn.Linear)) / 1e6
    table, built = [], {}
    with torch.no_grad():
        bf16_fid = compare(ref, embed(bf16, tok, SENTENCES))
        table.append(("fp32", "torch", 1.0, 1.0, 1.0, _size_mb(base, "torch"), 0.0, 1.0, 1.0, 1.0, 1.0, fp32_linear_mb))
        table.append(("bf16", "torch", bf16_fid.mean_cos, bf16_fid.worst_cos, bf16_fid.nn_agreement,
                      _size_mb(bf16, "torch"), 0.0, None, None, None, None, fp32_linear_mb / 2))
        for name, (provider, desc, apply) in chosen.items():
            try:
                model = copy.deepcopy(base)
                t0, c0 = time.perf_counter(), time.process_time()
                model = apply(model)
                qtime, qcpu = time.perf_counter() - t0, time.process_time() - c0
                fid = compare(ref, embed(model, tok, SENTENCES))
                size = _size_mb(model, provider)
                lin_mb = _linear_mb(model, provider)
                lat32 = _interleaved({"fp32": lambda: base(**batch32), "bf16": lambda: bf16(**batch32),
                                      "q": lambda: model(**batch32)}, reps)
                lat1 = _interleaved({"fp32": lambda: base(**batch1), "bf16": lambda: bf16(**batch1),
                                     "q": lambda: model(**batch1)}, reps * 3)
            except Exception as exc:  # a peer failing on CPU is a result, not a crash
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
                print(f"{name:16s} FAILED {msg}")
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
                rows.add("minilm", provider, "failed", "", 1, config={"method": name, "error": msg})
                continue
            s32f, s32b = _speedup(lat32, "fp32", "q"), _speedup(lat32, "bf16", "q")
            s1f, s1b = _speedup(lat1, "fp32", "q"), _speedup(lat1, "bf16", "q")
            lat32, lat1 = _median(lat32), _median(lat1)
            table.append((name, provider, fid.mean_cos, fid.worst_cos, fid.nn_agreement, size, qcpu, s32f, s32b,
                          s1f, s1b, lin_mb))
            cfg = {"method": name, "desc": desc}
            for metric, unit, value in [("mean_cos", "", fid.mean_cos), ("worst_cos", "", fid.worst_cos),
                                        ("nn_agreement", "", fid.nn_agreement), ("file_size", "MB", size),
                                        ("linear_weights", "MB", lin_mb), ("quant_time", "s", qtime),
                                        ("quant_cpu_time", "s", qcpu),
                                        ("latency_b32", "ms", lat32["q"] * 1e3), ("latency_b1", "ms", lat1["q"] * 1e3),
                                        ("speedup_b32_vs_fp32", "x", s32f), ("speedup_b32_vs_bf16", "x", s32b),
                                        ("speedup_b1_vs_fp32", "x", s1f), ("speedup_b1_vs_bf16", "x", s1b)]:
                rows.add("minilm", provider, metric, unit, value, config=cfg)
            print(f"{name:16s} done: cos {fid.mean_cos:.4f} b32 {s32f:.2f}x fp32", flush=True)
            if args.ab:
                built[name] = (provider, model)
        _print_table(table)
        if args.ab:
            ab_rounds(base, bf16, built, batch32, max(reps, 15), rows)
    if not args.no_kernels:
        kernel_sweep(rows, reps)
    path = rows.write()
    print(f"\nwrote {path}")
    return 0


def _linear_mb(model, provider) -> float:
    """Bytes of the Linear layers' weight storage (codes + scales + zeros), as quantized."""
    model = getattr(model, "inner", model)
    if provider == "leanformer" and _has_quantized(model):
        from leanformer.quant import QuantizedLinear

        return sum(sum(b.numel() * b.element_size() for n, b in m.named_buffers() if n != "bias")
                   for m in model.modules() if isinstance(m, QuantizedLinear)) / 1e6
    total = 0
    for m in model.modules():
        if type(m).__name__ in ("Linear", "HQQLinear"):
            total += sum(_tensor_bytes(t) for n, t in m.state_dict().items() if not n.endswith("bias")
                         and isinstance(t, torch.Tensor))
    return total / 1e6


def _tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes, looking inside tensor subclasses (torchao) at their inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    if isinstance(t, torch.nn.Parameter) and type(t.data) is not torch.Tensor:
        return _tensor_bytes(t.data)
    return t.numel() * t.element_size()


def _print_table(table) -> None:
    head = ("method", "provider", "mean cos", "worst", "NN", "file MB", "Lin MB", "quant CPU s", "b32 vs fp32",
            "b32 vs bf16", "b1 vs fp32", "b1 vs bf16")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for name, prov, mc, wc, nn, size, qt, s32f, s32b, s1f, s1b, lin in table:
        print(f"| {name} | {prov} | {mc:.4f} | {wc:.4f} | {nn:.2f} | {size:.1f} | {lin:.2f} | {qt:.2f} | "
              f"{fmt(s32f, '.2f')} | {fmt(s32b, '.2f')} | {fmt(s1f, '.2f')} | {fmt(s1b, '.2f')} |")


if __name__ == "__main__":
    sys.exit(main())
