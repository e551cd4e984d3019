"""The training loop behind `leanformer train`.

Setup checks everything a user can get wrong (model, sequence length, data, output and resume directories,
memory budget) before the first step, so a bad flag never costs a run. The step itself is plain PyTorch:
micro-batches with gradient accumulation, a token-summed cross-entropy divided by the number of target
tokens in the *global* batch (so accumulation and DDP/FSDP2 give the same gradient as one big batch),
gradient clipping, warmup + cosine learning rate computed from the step number (nothing to checkpoint).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from leanformer.train import checkpoint as ckpt
from leanformer.train import distributed as dist_
from leanformer.train import recipes
from leanformer.train.budget import Plan, measure, plan_batch
from leanformer.train.config import TrainConfig
from leanformer.train.data import IGNORE, Sampler, build_dataset, make_tokenizer
from leanformer.train.progress import Progress


class TrainError(ValueError):
    """A user-facing problem found before or during training (one line)."""


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of per-token cross-entropy over targets != IGNORE. logits (b, S, V), targets (b, S)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def lr_at(step: int, *, base: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 10% of ``base`` at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def model_overrides(cfg: TrainConfig, spec) -> dict[str, Any]:
    """Config overrides: the byte vocabulary for random-init models, --layers, --hidden (checked)."""
    from leanformer.models import build_config

    out: dict[str, Any] = {}
    if spec.path is None:  # random init trains on the byte tokenizer: ids >= 260 would never be seen
        from leanformer.data.bytes_tokenizer import VOCAB_SIZE

        out["vocab_size"] = VOCAB_SIZE
    if cfg.layers is not None:
        out["num_hidden_layers"] = cfg.layers
    if cfg.hidden is not None:
        if spec.path is not None:
            raise TrainError(f"--hidden cannot change a pretrained model ({spec.name}); use a named config")
        base = build_config(spec)
        heads = base.num_attention_heads
        if cfg.hidden % heads:
            raise TrainError(f"--hidden {cfg.hidden} is not a multiple of the model's {heads} attention heads")
        out["hidden_size"] = cfg.hidden
        inter = getattr(base, "intermediate_size", None)
        if inter:  # keep the MLP ratio, rounded to a multiple of 8
            out["intermediate_size"] = max(8, int(round(inter * cfg.hidden / base.hidden_size / 8)) * 8)
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig, *, verbose: bool = True):
        self.cfg, self.verbose = cfg, verbose
        self.ctx = dist_.setup(cfg.distributed)
        self.recipe = recipes.RECIPES[cfg.recipe]
        self.autocast = cfg.dtype == "bfloat16"
        try:
            self._check_model()
            self._check_out()
            self.resume_from = self._find_resume()
            self._build_data()
            self._split_batch()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ setup (no training work yet)
    def _check_model(self) -> None:
        from leanformer.models import ModelError, build_config, resolve

        cfg = self.cfg
        try:
            self.spec = resolve(cfg.model)
            self.overrides = model_overrides(cfg, self.spec)
            hf_cfg = build_config(self.spec, **self.overrides)
        except ModelError as exc:
            raise TrainError(str(exc)) from exc
        self.masked_lm = hf_cfg.model_type in ("bert", "roberta", "distilbert", "albert", "electra", "deberta",
                                               "deberta-v2")
        max_pos = getattr(hf_cfg, "max_position_embeddings", None) or getattr(hf_cfg, "n_positions", None)
        if max_pos is not None and cfg.seq > max_pos:
            raise TrainError(f"--seq {cfg.seq} exceeds the model's maximum sequence length ({max_pos})")
        if self.masked_lm and cfg.seq < 3:
            raise TrainError(f"--seq {cfg.seq} is too short for a masked LM ([CLS] + text + [SEP] needs >= 3)")
        self.vocab_size = hf_cfg.vocab_size

    def _check_out(self) -> None:
        out = self.cfg.out or (None if self.cfg.resume is None else _out_of(Path(self.cfg.resume)))
        self.out = Path(out) if out else None
        if self.out is None:
            return
        if self.out.exists() and not self.out.is_dir():
            raise TrainError(f"--out {str(self.out)!r} exists and is not a directory")
        existing = ckpt.list_checkpoints(self.out)
        if existing and self.cfg.resume is None:
            raise TrainError(f"--out {str(self.out)!r} already holds checkpoints ({existing[-1].name}); "
                             f"continue with --resume {self.out} or choose another --out")

    def _find_resume(self) -> Path | None:
        if self.cfg.resume is None:
            return None
        try:
            return ckpt.find_checkpoint(self.cfg.resume)
        except ckpt.CheckpointError as exc:
            raise TrainError(str(exc)) from exc

    def _build_data(self) -> None:
        cfg = self.cfg
        from leanformer.train.data import DataError

        try:
            self.tokenizer = make_tokenizer(self.spec.path, self.vocab_size)
            self.data = build_dataset(cfg.data, seq=cfg.seq, masked_lm=self.masked_lm, tokenizer=self.tokenizer,
                                      seed=cfg.seed, val_windows=cfg.eval_batches * cfg.batch)
        except DataError as exc:
            raise TrainError(str(exc)) from exc
        self.sampler = Sampler(len(self.data.train), cfg.seed)

    def _split_batch(self) -> None:
        cfg, world = self.cfg, self.ctx.world
        if cfg.batch % world:
            raise TrainError(f"--batch {cfg.batch} is not divisible by the {world} processes")
        self.local_batch = cfg.batch // world
        self.micro_batch = cfg.micro_batch or self.local_batch
        if self.local_batch % self.micro_batch:
            raise TrainError(f"micro-batch {self.micro_batch} does not divide the per-process batch {self.local_batch}")

    # ------------------------------------------------------------ model + optimizer
    def fresh_model(self, recipe: recipes.Recipe) -> tuple[torch.nn.Module, dict[str, Any]]:
        model = self._build(recipe)
        info = recipes.apply_recipe_(model, recipe)
        return model.to(self.ctx.device).train(), info

    def _build(self, recipe: recipes.Recipe) -> torch.nn.Module:
        import transformers

        from leanformer.models import build_model

        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar per throwaway copy
        try:
            # use_cache=False: a causal LM would otherwise build a KV cache in every training forward
            return build_model(self.cfg.model, attn_implementation=recipe.attn_implementation, seed=self.cfg.seed,
                               **{"use_cache": False, **self.overrides})
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()

    def fresh_optimizer(self, model: torch.nn.Module, name: str):
        return recipes.build_optimizer(name, model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                        model=dist_.unwrap(model))  # groups are found on the model DDP wraps

    def measure_recipe(self, recipe: recipes.Recipe, optimizer: str, micro_batch: int):
        """One measured step of a throwaway model with this recipe at this micro-batch."""
        model, _ = self.fresh_model(recipe)
        opt, _, _ = self.fresh_optimizer(model, optimizer)
        inputs, targets = self._device_batch(self.data.train, torch.arange(micro_batch) % len(self.data.train))
        n = max(1, int((targets != IGNORE).sum()))
        with self._autocast():
            return measure(model, inputs, lambda out: token_loss_sum(out.logits, targets) / n, opt)

    def plan(self) -> Plan | None:
        if self.cfg.memory_budget is None:
            return None
        return plan_batch(self.local_batch, self.cfg.memory_budget,
                          lambda b: self.measure_recipe(self.recipe, self.cfg.optimizer_name, b))

    def _device_batch(self, data, idx: torch.Tensor):
        inputs, targets = data.batch(idx)
        dev = self.ctx.device
        return {k: v.to(dev) for k, v in inputs.items()}, targets.to(dev)

    def _autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------ state for checkpoints
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.ctx.mode == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return dist_.unwrap(self.model).state_dict()

    def _optim_state(self) -> dict[str, Any]:
        """The optimizer's state_dict; under FSDP2 this rank's shard, DTensors stored as their local parts.

        Not torch.distributed.checkpoint's full optimizer state dict: it gathers DTensor state only, and would
        save rank 0's copy of plain per-rank tensors (APOLLO keeps its shard-local moments as plain tensors)."""
        sd = self.opt.state_dict()
        if self.ctx.mode != "fsdp2":
            return sd
        from leanformer.train.distributed import is_dtensor

        local, marks = {}, []
        for pid, st in sd["state"].items():  # new dicts: the optimizer's own state must stay untouched
            local[pid] = {k: v.to_local() if is_dtensor(v) else v for k, v in st.items()}
            marks += [[pid, k] for k, v in st.items() if is_dtensor(v)]
        return {"state_dict": {"state": local, "param_groups": sd["param_groups"]}, "dtensor": marks}

    def _load_optim_state(self, state: dict[str, Any]) -> None:
        if self.ctx.mode != "fsdp2":
            self.opt.load_state_dict(state)
            return
        from torch.distributed.tensor import DTensor

        params = [p for g in self.opt.param_groups for p in g["params"]]
        sd = state["state_dict"]
        for pid, key in state["dtensor"]:
            p = params[pid]
            sd["state"][pid][key] = DTensor.from_local(sd["state"][pid][key].to(p.device), p.device_mesh,
                                                       p.placements, run_check=False)
        self.opt.load_state_dict(sd)

    def snapshot(self) -> ckpt.Snapshot:
        """Copy-on-snapshot: every tensor cloned to CPU now; writing can then happen in the background."""
        trainer = {"step": torch.tensor(self.step), "tokens": torch.tensor(self.tokens),
                   **{f"sampler_{k}": v for k, v in self.sampler.state_dict().items()}, **ckpt.rng_state()}
        meta = {"config": self.cfg.to_dict(), "fingerprint": self.fingerprint, "optimizer": self.opt_name,
                "step": self.step, "world": self.ctx.world, "distributed": self.ctx.mode,
                "recipe": self.recipe_info, "torch": torch.__version__}
        return ckpt.Snapshot(self.step, ckpt.to_cpu_copy(self._model_state()), ckpt.to_cpu_copy(self._optim_state()),
                             ckpt.to_cpu_copy(trainer), meta)

    # ------------------------------------------------------------ build + resume
    def prepare(self) -> None:
        cfg = self.cfg
        self.plan_result = self.plan()
        if self.plan_result is not None:
            self.micro_batch = self.plan_result.micro_batch
        self.model, self.recipe_info = self.fresh_model(self.recipe)
        self.fingerprint = ckpt.model_fingerprint(self.model)
        state = None
        if self.resume_from is not None:
            try:
                state = ckpt.load_checkpoint(self.resume_from, rank=self.ctx.rank, world=self.ctx.world)
            except ckpt.CheckpointError as exc:
                raise TrainError(str(exc)) from exc
            self.opt_name = recipes.resolve_optimizer(cfg.optimizer_name)[0]
            try:
                ckpt.check_compatible(state["meta"], fingerprint=self.fingerprint, optimizer=self.opt_name,
                                      path=self.resume_from)
                self.sampler.load_state_dict({k[len("sampler_"):]: v for k, v in state["trainer"].items()
                                              if k.startswith("sampler_")})
            except ValueError as exc:
                raise TrainError(str(exc)) from exc
            self.model.load_state_dict(state["model"])
        self.model = dist_.wrap(self.model, self.ctx)
        self.opt, self.opt_name, self.base_lr = self.fresh_optimizer(self.model, cfg.optimizer_name)
        self.step, self.tokens = 0, 0
        if state is not None:
            self._load_optim_state(state["optimizer"])
            self.step, self.tokens = int(state["trainer"]["step"]), int(state["trainer"]["tokens"])
        torch.manual_seed(cfg.seed)  # a defined RNG state at step 0, whatever setup consumed
        if state is not None:
            ckpt.set_rng_state(state["trainer"])
        # FSDP2 saves synchronise the ranks, so they are written in the foreground
        background = cfg.async_save and self.ctx.mode != "fsdp2"
        self.writer = ckpt.CheckpointWriter(self.out, keep=cfg.keep, background=background) if self.out else None
        self.rank0_pid = dist_.broadcast_int(os.getpid(), self.ctx)

    # ------------------------------------------------------------ the step
    def train_step(self) -> float:
        cfg, ctx = self.cfg, self.ctx
        idx = self.sampler.take(cfg.batch)  # the global batch: every rank draws the same indices
        local = idx[ctx.rank * self.local_batch:(ctx.rank + 1) * self.local_batch]
        micro = [self._device_batch(self.data.train, chunk) for chunk in local.split(self.micro_batch)]
        n_local = sum(int((t != IGNORE).sum()) for _, t in micro)
        n_items = dist_.all_reduce_sum([float(n_local)], ctx)[0]
        scale = ctx.world / max(n_items, 1.0)  # DDP/FSDP2 average gradients over ranks: undo it
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, base=self.base_lr, warmup=cfg.warmup, total=cfg.steps)
        loss_sum = 0.0
        for i, (inputs, targets) in enumerate(micro):
            with dist_.grad_sync(self.model, ctx, enabled=i == len(micro) - 1), self._autocast():
                part = token_loss_sum(self.model(**inputs).logits, targets)
                (part * scale).backward()
            loss_sum += float(part.detach())
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += cfg.batch * cfg.seq
        return dist_.all_reduce_sum([loss_sum], ctx)[0] / max(n_items, 1.0)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean token loss on the held-out windows (each rank its share, then summed)."""
        ctx, val = self.ctx, self.data.val
        n = len(val) // ctx.world * ctx.world
        idx = torch.arange(len(val))[ctx.rank:n:ctx.world] if n else torch.arange(len(val))
        self.model.eval()
        loss, count = 0.0, 0.0
        for chunk in idx.split(self.micro_batch):
            inputs, targets = self._device_batch(val, chunk)
            with self._autocast():
                loss += float(token_loss_sum(self.model(**inputs).logits, targets))
            count += float((targets != IGNORE).sum())
        self.model.train()
        if n:
            loss, count = dist_.all_reduce_sum([loss, count], ctx)
        return loss / max(count, 1.0)

    def save(self) -> None:
        snap = self.snapshot()  # collective under FSDP2: every rank takes part
        if self.ctx.mode != "fsdp2":
            if self.writer is not None and self.ctx.is_main:
                self.writer.save(snap)
            return
        # FSDP2: every rank puts its optimizer shard into rank 0's temporary directory, then rank 0 commits
        tmp = ckpt.temp_dir(self.out, self.step, pid=self.rank0_pid, tag=0)
        if self.ctx.is_main:
            ckpt.fresh_dir(tmp)
        dist_.barrier(self.ctx)
        ckpt.save_rank_optimizer(snap.optimizer, tmp, self.ctx.rank)
        dist_.barrier(self.ctx)
        if self.ctx.is_main:
            snap.optimizer = {"sharded_world": torch.tensor(self.ctx.world)}
            self.writer.save(snap, tmp=tmp)
        dist_.barrier(self.ctx)

    # ------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.prepare()
        show = self.ctx.is_main and self.verbose
        bar = Progress(total=cfg.steps, initial=self.step, enabled=show and cfg.progress, verbose=show)
        self._announce(bar)
        history: list[dict[str, float]] = []
        train_time, loss, tokens0 = 0.0, float("nan"), self.tokens
        t_wall = time.perf_counter()
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                loss = self.train_step()
                train_time += time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise TrainError(f"loss became {loss} at step {self.step}; lower --lr or use --dtype float32")
                bar.update(loss=loss, tokens_per_s=(self.tokens - tokens0) / max(train_time, 1e-9),
                           lr=self.opt.param_groups[0]["lr"])
                last = self.step == cfg.steps
                if cfg.eval_every and (self.step % cfg.eval_every == 0) and not last:
                    val = self.evaluate()
                    history.append({"step": self.step, "train_loss": loss, "val_loss": val})
                    bar.log(f"step {self.step:>5}  train loss {loss:.4f}  val loss {val:.4f}")
                if self.writer is not None and cfg.save_every and self.step % cfg.save_every == 0 and not last:
                    self.save()
            val = self.evaluate()
            history.append({"step": self.step, "train_loss": loss, "val_loss": val})
            bar.log(f"step {self.step:>5}  train loss {loss:.4f}  val loss {val:.4f}")
            if self.writer is not None:
                self.save()
                self.writer.wait()
        except KeyboardInterrupt:
            self._save_on_interrupt(bar)
            raise
        finally:
            bar.close()
        dist_.barrier(self.ctx)
        return self._result(history, train_time, time.perf_counter() - t_wall, tokens0)

    def _save_on_interrupt(self, bar: Progress) -> None:
        """Ctrl-C: keep the work done so far (the last completed step), so --resume can pick it up.
        Not under FSDP2, where gathering the state is a collective the other ranks may not join."""
        if self.writer is None or self.ctx.mode == "fsdp2" or not self.ctx.is_main:
            return
        self.writer.wait()
        if self.writer.last is None or not self.writer.last.name.endswith(f"{self.step:06d}"):
            self.writer.background = False
            self.save()
            bar.log(f"interrupted: saved step {self.step} to {self.writer.last}; continue with --resume {self.out}")

    def _patch_note(self) -> str:
        report = self.recipe_info.get("report")
        if not self.recipe_info.get("patched"):
            return "off"
        if isinstance(report, dict):
            return f"{sum(report.values())} modules swapped"
        return "on"

    def _announce(self, bar: Progress) -> None:
        cfg = self.cfg
        n_params = self.fingerprint["n_params"]
        bar.log(f"model {cfg.model} ({n_params / 1e6:.2f}M params, {'masked' if self.masked_lm else 'causal'} LM) | "
                f"recipe {cfg.recipe} (patch_: {self._patch_note()}, "
                f"optimizer {self.opt_name}, lr {self.base_lr:g}) | {self.ctx.mode if self.ctx.world > 1 else 'single process'}"
                f" x{self.ctx.world} on {self.ctx.device.type}")
        bar.log(f"data {self.data.description}: {self.data.n_tokens:,} tokens ({self.tokenizer.name}), "
                f"{len(self.data.train):,} train / {len(self.data.val):,} val windows of {cfg.seq}")
        bar.log(f"batch {cfg.batch} = {self.ctx.world} process(es) x micro-batch {self.micro_batch} x "
                f"{self.local_batch // self.micro_batch} accumulation step(s); {cfg.steps} steps")
        if self.plan_result is not None:
            bar.log(self.plan_result.describe())
        if self.resume_from is not None:
            bar.log(f"resumed from {self.resume_from} at step {self.step}")

    def _result(self, history, train_time: float, wall: float, tokens0: int) -> dict[str, Any]:
        cfg = self.cfg
        final = history[-1] if history else {}
        result: dict[str, Any] = {
            "model": cfg.model, "recipe": cfg.recipe, "optimizer": self.opt_name, "lr": self.base_lr,
            "patched": bool(self.recipe_info.get("patched")), "patch_report": self.recipe_info.get("report"),
            "steps": self.step, "batch": cfg.batch,
            "micro_batch": self.micro_batch, "accumulation": self.local_batch // self.micro_batch, "seq": cfg.seq,
            "world": self.ctx.world, "distributed": self.ctx.mode, "n_params": self.fingerprint["n_params"],
            "train_loss": final.get("train_loss"), "val_loss": final.get("val_loss"), "history": history,
            "tokens_per_s": (self.tokens - tokens0) / train_time if train_time else None, "wall_s": wall,
            "checkpoint": str(self.writer.last) if self.writer is not None and self.writer.last else None,
        }
        if self.plan_result is not None:
            p = self.plan_result
            result["plan"] = {"budget": p.budget, "micro_batch": p.micro_batch, "accumulation": p.accum,
                              "measured_bytes": p.measured.total, "tried": p.tried}
        return result

    def close(self) -> None:
        dist_.teardown(self.ctx)


def memory_table(trainer: Trainer) -> dict[str, Any]:
    """Lean recipe vs stock recipe (HF attention + AdamW), one measured step each at the run's micro-batch."""
    out: dict[str, Any] = {"micro_batch": trainer.micro_batch, "seq": trainer.cfg.seq}
    lean_opt = trainer.cfg.optimizer_name if trainer.cfg.recipe == "lean" else recipes.RECIPES["lean"].optimizer
    for name, opt in (("lean", lean_opt), ("stock", recipes.RECIPES["stock"].optimizer)):
        m = trainer.measure_recipe(recipes.RECIPES[name], opt, trainer.micro_batch)
        out[name] = {"optimizer": recipes.resolve_optimizer(opt)[0], "params": m.params, "grads": m.grads,
                     "optimizer_state": m.optimizer_state, "activations": m.activations, "total": m.total,
                     "source": m.source}
    return out


def _out_of(resume: Path) -> Path:
    """The run directory a resume path belongs to (a step directory's parent, or itself)."""
    return resume.parent if ckpt.STEP_DIR.match(resume.name) else resume


def train(cfg: TrainConfig, *, verbose: bool = True) -> dict[str, Any]:
    """Run ``cfg`` end to end; returns the result dict (`leanformer train --json` prints it)."""
    trainer = Trainer(cfg, verbose=verbose)
    try:
        result = trainer.run()
        if cfg.memory_table and trainer.ctx.is_main:
            result["memory"] = memory_table(trainer)
        return result
    finally:
        trainer.close()
