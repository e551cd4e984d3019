"""Checkpoints: safetensors weights, tensor-only optimizer and loop state, written atomically.

Layout of ``OUT/step-000123/``: ``model.safetensors`` (weights), ``optimizer.pt`` and ``trainer.pt``
(``torch.load(weights_only=True)`` loadable: tensors and plain numbers only, DESIGN.md convention 7),
``meta.json`` (config, model fingerprint, versions).

Atomic: everything is written into a hidden temporary directory, fsync'ed, then renamed to its final name
in one step, so a crash mid-save leaves the previous checkpoint untouched and no half checkpoint behind a
real name. Background saving follows the Async-fork idea of copy-on-snapshot: the state is cloned to CPU
synchronously (cheap next to a step), and a thread writes the clone while training goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STEP_DIR = re.compile(r"^step-(\d+)$")
FILES = ("model.safetensors", "optimizer.pt", "trainer.pt", "meta.json")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, or belongs to another model/run."""


@dataclass
class Snapshot:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    trainer: dict[str, torch.Tensor]
    meta: dict[str, Any]


def to_cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor cloned to CPU (the copy-on-snapshot step)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu_copy(v) for v in obj)
    return obj


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Names, shapes and size of the parameters: what must match for a resume to make sense."""
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    digest = hashlib.sha1(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
    return {"sha1": digest, "n_params": sum(p.numel() for p in model.parameters()), "n_tensors": len(shapes)}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng_cuda_{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["rng_cpu"])
    cuda = [state[k] for k in sorted(state) if k.startswith("rng_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- writing
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _save_tensor_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def temp_dir(out: Path, step: int, pid: int | None = None, tag: int | None = None) -> Path:
    """The hidden directory a save of ``step`` is written into before its rename (pid: see remove_stale_temps)."""
    pid = os.getpid() if pid is None else pid
    return out / f".tmp-step-{step:06d}-{pid}-{threading.get_ident() if tag is None else tag}"


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def save_rank_optimizer(state: dict[str, Any], tmp: Path, rank: int) -> None:
    """FSDP2: each rank's own optimizer shard, into the save's temporary directory (before the commit)."""
    path = tmp / f"optimizer.rank{rank}.pt"
    torch.save(state, path)
    _fsync_file(path)


def write_snapshot(snap: Snapshot, out: Path, keep: int, *, tmp: Path | None = None) -> Path:
    """Write ``snap`` to ``out/step-NNNNNN`` atomically; prune to the newest ``keep``; return its path.
    ``tmp``: an already prepared temporary directory (holding the FSDP2 ranks' optimizer shards)."""
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"step-{snap.step:06d}"
    if tmp is None:
        tmp = fresh_dir(temp_dir(out, snap.step))
    _save_tensor_file(snap.model, tmp / "model.safetensors", {"format": "pt", "step": str(snap.step)})
    torch.save(snap.optimizer, tmp / "optimizer.pt")
    torch.save(snap.trainer, tmp / "trainer.pt")
    (tmp / "meta.json").write_text(json.dumps(snap.meta, indent=1, sort_keys=True))
    for name in FILES:
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    old = None
    if final.exists():  # the same step saved again: keep the old one until the new one is in place
        old = out / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)  # the commit point
    _fsync_dir(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(out)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temps(out: Path) -> None:
    """Delete temporary directories left by saves whose process died (a crash mid-save)."""
    if not out.is_dir():
        return
    for tmp in out.glob(".tmp-step-*"):
        try:
            pid = int(tmp.name.split("-")[3])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


class CheckpointWriter:
    """Writes snapshots in the caller's thread, or in one background thread (one save in flight)."""

    def __init__(self, out: Path, *, keep: int, background: bool):
        self.out, self.keep, self.background = out, keep, background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last: Path | None = None
        remove_stale_temps(out)

    def save(self, snap: Snapshot, *, tmp: Path | None = None) -> None:
        self.wait()
        if not self.background or tmp is not None:
            self.last = write_snapshot(snap, self.out, self.keep, tmp=tmp)
            return
        self._thread = threading.Thread(target=self._run, args=(snap,), name="leanformer-ckpt", daemon=False)
        self._thread.start()

    def _run(self, snap: Snapshot) -> None:
        try:
            self.last = write_snapshot(snap, self.out, self.keep)
        except BaseException as exc:  # re-raised in the training thread by wait()
            self._error = exc

    def wait(self) -> Path | None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self.last


# ---------------------------------------------------------------- reading
def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under ``out``, oldest first (temporary directories never match)."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if all((p / f).is_file() for f in FILES)]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory itself, or the newest complete one inside a run's output directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"resume directory {str(p)!r} does not exist")
    if all((p / f).is_file() for f in FILES):
        return p
    found = list_checkpoints(p)
    if not found:
        raise CheckpointError(f"no complete checkpoint in {str(p)!r} (expected step-NNNNNN/ with {', '.join(FILES)})")
    return found[-1]


def load_checkpoint(path: Path, *, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Everything in a checkpoint; for an FSDP2 one, this rank's optimizer shard (same world size needed)."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "meta.json").read_text())
        optimizer = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        if "sharded_world" in optimizer:
            if int(optimizer["sharded_world"]) != world:
                raise CheckpointError(f"checkpoint {str(path)!r} holds optimizer shards of {optimizer['sharded_world']} "
                                      f"FSDP2 processes; resume it with --nproc_per_node {optimizer['sharded_world']}")
            optimizer = torch.load(path / f"optimizer.rank{rank}.pt", weights_only=True, map_location="cpu")
        return {
            "path": path,
            "meta": meta,
            "model": load_file(str(path / "model.safetensors")),
            "optimizer": optimizer,
            "trainer": torch.load(path / "trainer.pt", weights_only=True, map_location="cpu"),
        }
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc}") from exc


def check_compatible(meta: dict[str, Any], *, fingerprint: dict[str, Any], optimizer: str, path: Path) -> None:
    """One-line error when a checkpoint belongs to another model or optimizer."""
    theirs = meta.get("fingerprint", {})
    if theirs.get("sha1") != fingerprint["sha1"]:
        cfg = meta.get("config", {})
        raise CheckpointError(
            f"resume directory {str(path)!r} holds a checkpoint of another model "
            f"({cfg.get('model')!r}, layers={cfg.get('layers')}, {theirs.get('n_params')} params); "
            f"this run builds one with {fingerprint['n_params']} params")
    if meta.get("optimizer") != optimizer:
        raise CheckpointError(f"resume directory {str(path)!r} was trained with optimizer {meta.get('optimizer')!r}, "
                              f"this run uses {optimizer!r}: pass --optimizer {meta.get('optimizer')}")
