"""`leanformer env`: the facts a bug report needs (versions, threads, CPU flags, accelerators)."""
from __future__ import annotations

import argparse
import json
import os
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _cpu_flags() -> list[str]:
    """SIMD flags that decide which CPU kernels are fast (from /proc/cpuinfo where there is one)."""
    wanted = ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "fma", "f16c", "neon", "asimd", "sve")
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in present]
    except OSError:
        pass
    return []


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def collect() -> dict:
    import torch

    from leanformer import __version__
    from leanformer.quant.amx import amx_int8_status, vnni_int8_status
    from leanformer.quant.amx_w4 import amx_w4_status
    from leanformer.quant.native import native_status
    from leanformer.quant.onednn import onednn_int8_status
    from leanformer.quant.w4a8 import amx_w4a8_status

    packages = ("transformers", "accelerate", "safetensors", "numpy", "torchao", "hqq", "apollo-torch", "matplotlib")
    return {
        "leanformer": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": _cpu_flags(),
        "native_quant_ops": native_status(),
        "onednn_int8_matmul": onednn_int8_status(),
        "amx_int8_matmul": amx_int8_status(build=False),
        "vnni_int8_matmul": vnni_int8_status(build=False),
        "amx_int4_matmul": amx_w4_status(build=False),
        "w4a8_matmul": amx_w4a8_status(build=False),
        "packages": {name: _package_version(name) for name in packages},
    }


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key == "packages":
            for name, ver in value.items():
                print(f"{name:>18}: {ver or 'not installed'}")
        else:
            print(f"{key:>18}: {value}")
    return 0
