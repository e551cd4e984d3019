"""TrainConfig: every knob of `leanformer train`, as one frozen, validated dataclass.

The CLI builds one from its flags; the loop, the checkpoint metadata and `--json` output all read this one
object, so a resumed run can check it is continuing the same job.
"""
from __future__ import annotations

import dataclasses

from leanformer.config import BaseConfig

DTYPES = ("float32", "bfloat16")
DISTRIBUTED = ("none", "ddp", "fsdp2")


@dataclasses.dataclass(frozen=True)
class TrainConfig(BaseConfig):
    # what to train
    model: str = "llama-tiny"
    layers: int | None = None  # override num_hidden_layers (tiny test runs)
    hidden: int | None = None  # override hidden_size (random-init models only)
    data: str | None = None  # text file or folder; None = built-in stdlib docstrings corpus
    # how
    recipe: str = "lean"
    optimizer: str | None = None  # None = the recipe's optimizer
    batch: int = 16  # global batch in sequences per optimizer step (all ranks, all micro-batches)
    micro_batch: int | None = None  # None = batch / world size (no accumulation) unless a budget plans it
    seq: int = 128
    steps: int = 300
    lr: float | None = None  # None = the optimizer's default from the recipe table
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    dtype: str = "float32"
    seed: int = 0
    memory_budget: int | None = None  # bytes; plan micro-batch + accumulation to fit
    # evaluation and checkpoints
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 0  # 0 = only at the end (when out is set)
    keep: int = 2  # checkpoints kept in out/
    async_save: bool = False
    out: str | None = None
    resume: str | None = None
    # scale-out
    distributed: str = "none"
    # reporting
    memory_table: bool = True
    progress: bool = True

    def _validate(self) -> None:
        positive = ("batch", "seq", "steps", "eval_batches", "keep")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                self._fail(name, value, "must be a positive integer")
        for name in ("layers", "hidden", "micro_batch", "memory_budget"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                self._fail(name, value, "must be a positive integer or None")
        for name in ("warmup", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                self._fail(name, value, "must be a non-negative integer")
        if self.micro_batch is not None and self.micro_batch > self.batch:
            self._fail("micro_batch", self.micro_batch, f"larger than the global batch {self.batch}")
        if self.lr is not None and not self.lr > 0:
            self._fail("lr", self.lr, "must be > 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            self._fail("grad_clip", self.grad_clip, "must be > 0 or None")
        if self.weight_decay < 0:
            self._fail("weight_decay", self.weight_decay, "must be >= 0")
        if self.dtype not in DTYPES:
            self._fail("dtype", self.dtype, f"choose one of {', '.join(DTYPES)}")
        if self.distributed not in DISTRIBUTED:
            self._fail("distributed", self.distributed, f"choose one of {', '.join(DISTRIBUTED)}")
        from leanformer.train.recipes import OPTIMIZERS, RECIPES

        if self.recipe not in RECIPES:
            self._fail("recipe", self.recipe, f"choose one of {', '.join(RECIPES)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            self._fail("optimizer", self.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")

    @property
    def optimizer_name(self) -> str:
        from leanformer.train.recipes import RECIPES

        return self.optimizer or RECIPES[self.recipe].optimizer
