"""The dispatcher and `leanformer env`: fast --help, clean errors."""
import json
import subprocess
import sys
import time


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "leanformer", *args], capture_output=True, text=True, timeout=timeout)


def test_help_is_fast_and_lists_subcommands():
    t0 = time.perf_counter()
    proc = _run("--help")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    for name in ("train", "profile", "quantize", "env"):
        assert name in proc.stdout
    assert elapsed < 2.0, f"--help took {elapsed:.2f}s"


def test_help_does_not_import_torch():
    code = "import sys; from leanformer.cli.main import main;\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_env_json_reports_versions():
    proc = _run("env", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["torch"].startswith("2.13")
    assert isinstance(report["cuda_available"], bool)
    assert report["cpu_count"] >= 1
    assert report["onednn_int8_matmul"].startswith(("on", "off", "unavailable"))
    assert report["amx_int8_matmul"].startswith(("on", "off", "unavailable", "not checked yet"))
    assert report["amx_int4_matmul"].startswith(("on", "off", "unavailable", "not checked yet"))
    assert report["vnni_int8_matmul"].startswith(("on", "off", "unavailable", "not checked yet"))
    assert report["w4a8_matmul"].startswith(("on", "off", "unavailable", "not checked yet"))


def test_unknown_subcommand_fails():
    proc = _run("frobnicate")
    assert proc.returncode != 0
