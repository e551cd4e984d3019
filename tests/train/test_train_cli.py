"""`leanformer train` end to end in a subprocess, and its one-line errors on bad input."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import one_thread, cli, text_file  # noqa: F401  (pytest fixtures)
from leanformer.cli.main import main

TINY_ARGS = ["--layers", "1", "--hidden", "64", "--seq", "32", "--batch", "4"]


def test_ten_step_run_end_to_end(tmp_path, text_file, cli):
    out = tmp_path / "run"
    proc = cli("train", *TINY_ARGS, "--steps", "10", "--eval-every", "5", "--data", str(text_file),
               "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["steps"] == 10 and res["recipe"] == "lean"
    # the real pieces, not their fallbacks: lean layers swapped in, APOLLO-Mini, the profiler's figures
    assert res["patched"] and res["optimizer"] == "apollo-mini" and "warning" not in proc.stderr
    assert res["memory"]["lean"]["source"] == "leanformer.profile"
    assert [h["step"] for h in res["history"]] == [5, 10]
    first, last = res["history"][0], res["history"][-1]
    assert last["val_loss"] < first["val_loss"] < 6.0  # learning: byte-level loss starts near ln(260) = 5.56
    assert res["tokens_per_s"] > 0
    # the memory table: lean and stock measured for the same micro-batch, every figure positive
    mem = res["memory"]
    assert mem["micro_batch"] == 4 and mem["seq"] == 32
    for recipe in ("lean", "stock"):
        assert mem[recipe]["params"] > 0 and mem[recipe]["activations"] > 0
        assert mem[recipe]["total"] == sum(mem[recipe][k] for k in ("params", "grads", "optimizer_state", "activations"))
    assert mem["stock"]["optimizer"] == "adamw"
    # the checkpoint: safetensors weights, weights_only-loadable optimizer and loop state
    step_dir = out / "step-000010"
    assert res["checkpoint"] == str(step_dir)
    weights = load_file(str(step_dir / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    opt = torch.load(step_dir / "optimizer.pt", weights_only=True)
    assert opt["state"], "optimizer state is empty"
    trainer = torch.load(step_dir / "trainer.pt", weights_only=True)
    assert int(trainer["step"]) == 10
    # lean layers keep the parameter names: the weights load strictly into a plain Hugging Face model
    from leanformer.models import build_model, resolve
    from leanformer.train.config import TrainConfig
    from leanformer.train.loop import model_overrides

    cfg = TrainConfig(layers=1, hidden=64)
    plain = build_model("llama-tiny", **model_overrides(cfg, resolve("llama-tiny")))
    plain.load_state_dict(weights, strict=True)


def test_text_output_has_summary_and_memory_table(text_file, capsys):
    code = main(["train", *TINY_ARGS, "--steps", "2", "--data", str(text_file), "--recipe", "stock", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "done: 2 steps of llama-tiny (stock recipe, adamw)" in out
    assert "saved activations" in out and "lean/stock" in out


def _error(capsys, *argv) -> str:
    code = main(["train", *TINY_ARGS, "--no-memory-table", "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    return err[-1]


def test_missing_and_empty_data(tmp_path, capsys):
    assert "does not exist" in _error(capsys, "--data", str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    assert "is empty" in _error(capsys, "--data", str(empty))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "no text files" in _error(capsys, "--data", str(folder))
    short = tmp_path / "short.txt"
    short.write_text("hello")
    assert "too few" in _error(capsys, "--data", str(short))


def test_sequence_above_model_maximum(capsys):
    msg = _error(capsys, "--seq", "5000")
    assert "--seq 5000 exceeds the model's maximum sequence length (1024)" in msg


def test_budget_too_small_for_batch_one(text_file, capsys):
    msg = _error(capsys, "--data", str(text_file), "--memory-budget", "64KiB")
    assert "too small for batch 1" in msg and "params" in msg


@pytest.mark.parametrize("argv, needle", [
    (["--memory-budget", "lots"], "cannot read memory size"),
    (["--batch", "0"], "--batch"),
    (["--model", "no-such-model"], "unknown model"),
    (["--micro-batch", "3"], "does not divide"),
    (["--hidden", "66"], "not a multiple"),
])
def test_bad_flags(argv, needle, text_file, capsys):
    assert needle in _error(capsys, "--data", str(text_file), *argv)


def test_resume_from_another_model_is_refused(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "2", "--data", str(text_file), "--out", str(out),
                 "--no-memory-table", "--no-progress"]) == 0
    capsys.readouterr()
    msg = _error(capsys, "--layers", "2", "--data", str(text_file), "--resume", str(out), "--out", str(tmp_path / "b"))
    assert "holds a checkpoint of another model" in msg
    # and an output directory that already holds checkpoints is never overwritten by a fresh run
    assert "already holds checkpoints" in _error(capsys, "--data", str(text_file), "--out", str(out))
    assert "does not exist" in _error(capsys, "--data", str(text_file), "--resume", str(tmp_path / "nothing"))


def test_bfloat16_autocast_run(text_file, capsys):
    assert main(["train", *TINY_ARGS, "--steps", "2", "--data", str(text_file), "--dtype", "bfloat16",
                 "--no-progress", "--no-memory-table", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 2 and 0 < res["val_loss"] < 7


def test_interrupt_saves_the_last_completed_step(tmp_path, text_file, monkeypatch):
    from leanformer.train import checkpoint as ckpt
    from leanformer.train.loop import Trainer

    real_step = Trainer.train_step

    def step_then_ctrl_c(self):
        loss = real_step(self)
        if self.step == 3:
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    code = main(["train", *TINY_ARGS, "--steps", "10", "--data", str(text_file), "--out", str(tmp_path / "run"),
                 "--no-progress", "--no-memory-table"])
    assert code == 130
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-000003"]


def test_train_help_is_cheap():
    import subprocess
    import sys

    code = "import sys\nfrom leanformer.cli.main import main\ntry: main(['train', '--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--memory-budget" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "False"


def test_minilm_masked_lm_fine_tuning(text_file, capsys):
    """A Hugging Face directory (the bundled all-MiniLM-L6-v2): its own tokenizer, masked-LM objective."""
    assert main(["train", "--model", "minilm", "--layers", "1", "--seq", "32", "--batch", "2", "--steps", "2",
                 "--data", str(text_file), "--no-progress", "--no-memory-table", "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert res["steps"] == 2 and res["patched"] and 0 < res["val_loss"] < 15
    assert "Loading weights" not in captured.err
