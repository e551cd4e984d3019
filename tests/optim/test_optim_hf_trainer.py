"""Hugging Face Trainer: our optimizer via ``optimizer_cls_and_kwargs`` and ``optimizers=(opt, sched)``; a
checkpoint written by Trainer resumes (Trainer loads optimizer.pt with ``torch.load(weights_only=True)``)."""
from __future__ import annotations

import pytest
import torch

from leanformer.optim import APOLLOMini

transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, seq=8, vocab=260):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model():
    from leanformer.models import build_model

    return build_model("llama-tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=48,
                       num_attention_heads=2, num_key_value_heads=2)


def _args(out, steps):
    return transformers.TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                                          save_steps=2, save_strategy="steps", logging_steps=1, report_to=[],
                                          use_cpu=True, learning_rate=1e-2, seed=0, data_seed=0,
                                          dataloader_num_workers=0, disable_tqdm=True)


@pytest.mark.slow
def test_trainer_cls_and_kwargs_and_resume(tmp_path):
    model = _model()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 4), train_dataset=_Tokens(),
                                   optimizer_cls_and_kwargs=(APOLLOMini, {"lr": 1e-2, "update_proj_gap": 2}))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      APOLLOMini)
    full = [p.detach().clone() for p in model.parameters()]

    resumed = _model()
    trainer2 = transformers.Trainer(model=resumed, args=_args(tmp_path, 4), train_dataset=_Tokens(),
                                    optimizer_cls_and_kwargs=(APOLLOMini, {"lr": 1e-2, "update_proj_gap": 2}))
    trainer2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for a, b in zip(full, resumed.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=0)


def test_trainer_optimizers_tuple(tmp_path):
    model = _model()
    opt = APOLLOMini(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    transformers.Trainer(model=model, args=_args(tmp_path, 2), train_dataset=_Tokens(),
                         optimizers=(opt, sched)).train()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert int(next(iter(opt.state.values()))["step"]) == 2
