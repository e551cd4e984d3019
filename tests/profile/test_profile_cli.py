"""`leanformer profile`: real subprocess runs (JSON parses, exit codes) and in-process error paths."""
import importlib
import json
import subprocess
import sys

import pytest

from leanformer.cli.main import main

TINY = ["--model", "llama-tiny", "--layers", "1", "--batch", "1", "--seq", "16"]


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "leanformer", "profile", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_json_parses_and_plot_is_written(tmp_path):
    png = tmp_path / "step.png"
    proc = _run(*TINY, "--attn", "eager", "--json", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("params_bytes", "grads_bytes", "optimizer_state_bytes", "saved_activation_bytes", "by_module", "by_kind"):
        assert key in data
    assert data["saved_activation_bytes"] == sum(data["by_module"].values()) > 0
    assert data["optimizer_state_bytes"] > 2 * data["params_bytes"]  # AdamW by default: 2 moments + step scalars
    assert "model.layers.0" in data["by_layer"] and "model.layers.1" not in data["by_layer"]  # --layers 1
    assert data["meta"]["attn"] == "eager" and data["meta"]["layers"] == 1
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_unknown_model_exits_with_one_line():
    proc = _run("--model", "no-such-model")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model" in lines[0], proc.stderr


def _main(capsys, *args):
    code = main(["profile", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_dir_without_config_fails_cleanly(tmp_path, capsys):
    code, _, err = _main(capsys, "--model", str(tmp_path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "config.json" in err


@pytest.mark.parametrize("args, match", [
    (["--set", "oops"], "KEY=VALUE"),
    (["--layers", "0"], "--layers"),
    (["--batch", "0"], "--batch"),
    (["--plot", "chart.jpg"], ".png"),
])
def test_cli_bad_arguments(capsys, args, match):
    code, _, err = _main(capsys, *TINY, *args)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_plot(tmp_path, capsys):
    existing = tmp_path / "mine.png"
    existing.write_bytes(b"user data")
    code, _, err = _main(capsys, *TINY, "--plot", str(existing))
    assert code == 2 and "overwrite" in err
    assert existing.read_bytes() == b"user data"


def test_cli_text_table(capsys):
    code, out, _ = _main(capsys, *TINY, "--optimizer", "none", "--dtype", "bf16")
    assert code == 0
    assert "Saved for backward by kind" in out and "model.layers.0" in out and "dtype=bf16" in out


def test_cli_lean_runs_or_says_why(capsys):
    try:
        importlib.import_module("leanformer").patch_
        available = True
    except (ImportError, AttributeError):
        available = False
    code, out, err = _main(capsys, *TINY, "--lean", "--optimizer", "none")
    if available:
        assert code == 0, err
        assert "lean/stock" in out
    else:
        assert code == 2 and "--lean needs leanformer.patch_" in err
