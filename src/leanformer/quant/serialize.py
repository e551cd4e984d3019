"""``save_quantized`` / ``load_quantized``: plain safetensors + versioned JSON, kernel layouts rebuilt at load.

Checkpoint directory:
    model.safetensors       every tensor of the model's state dict (packed codes, scales, zeros, float rest);
                            tensors shared by several keys are stored once (aliases listed in the JSON)
    leanformer_quant.json   {"format": "leanformer.quant", "version": 1, "model": {...}, "modules": {name: spec},
                            "aliases": {key: stored_key}, "sha256": <of model.safetensors>}
    config.json             (transformers models) the model config, to rebuild the same class

Loading a transformers model rebuilds it from its config with the class that was saved, swaps in empty
quantized modules from the JSON specs, then loads the tensors strictly: the result is the same class with
the same forward. Other models: pass ``model=`` (a freshly built float model of the same architecture).
Departure from torchao: nothing kernel-specific (tinygemm tiles, opaque int4) is ever stored
(pytorch/ao#3800).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from .attention import ATTENTION_NAME, use_short_attention_
from .modules import QUANTIZED_MODULES

__all__ = ["save_quantized", "load_quantized", "CheckpointError", "FORMAT", "VERSION", "is_checkpoint", "check_writable"]

FORMAT, VERSION = "leanformer.quant", 1
META, TENSORS = "leanformer_quant.json", "model.safetensors"


class CheckpointError(ValueError):
    """The directory is not a (valid, compatible, intact) leanformer quantized checkpoint."""


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_info(model: nn.Module) -> dict:
    cls = type(model)
    info = {"class": cls.__name__, "module": cls.__module__, "kind": "torch"}
    if hasattr(model, "config") and hasattr(model.config, "to_json_string") and cls.__module__.startswith("transformers"):
        info["kind"] = "transformers"
    return info


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each storage once: safetensors refuses shared tensors (safetensors#515)."""
    out, aliases, seen = {}, {}, {}
    for key, t in state.items():
        sig = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and sig in seen:
            aliases[key] = seen[sig]
            continue
        seen[sig] = key
        out[key] = t.detach().contiguous().cpu()
    return out, aliases


def check_writable(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Raise unless ``directory`` is new, empty, a leanformer checkpoint, or ``overwrite`` is set."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not is_checkpoint(directory) and not overwrite:
        raise CheckpointError(f"{directory} is not empty and is not a leanformer checkpoint; "
                              "pass overwrite=True (CLI: --overwrite) to write into it")
    return directory


def save_quantized(model: nn.Module, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a (partly) quantized model. Refuses a non-empty directory that is not a leanformer checkpoint
    unless ``overwrite=True``; an existing leanformer checkpoint there is replaced."""
    from safetensors.torch import save_file

    directory = check_writable(directory, overwrite=overwrite)
    modules = {name: {"type": type(m).__name__, **m.spec()} for name, m in model.named_modules()
               if type(m).__name__ in QUANTIZED_MODULES and isinstance(m, QUANTIZED_MODULES[type(m).__name__])}
    if not modules:
        raise ValueError("model has no quantized modules; run leanformer.quant.quantize_ first")
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedupe(model.state_dict())
    tmp = directory / (TENSORS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    os.replace(tmp, directory / TENSORS)
    info = _model_info(model)
    if info["kind"] == "transformers":
        model.config.save_pretrained(directory)
    meta = {"format": FORMAT, "version": VERSION, "model": info, "modules": modules, "aliases": aliases,
            "sha256": _sha256(directory / TENSORS), "torch": torch.__version__}
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTENTION_NAME:
        meta["attention"] = ATTENTION_NAME  # config.json does not record it; load_quantized switches it back on
    fast = [name for name, m in model.named_modules() if type(m).__name__ == "FastBertLayer"]
    if fast:
        meta["fast_layers"] = fast  # the class swap of fast_layer.use_fast_layers_, redone at load
    (directory / (META + ".tmp")).write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(directory / (META + ".tmp"), directory / META)
    return directory


def _read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    if not is_checkpoint(directory):
        raise CheckpointError(f"{directory} is not a leanformer quantized checkpoint (no {META})")
    try:
        meta = json.loads((directory / META).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{directory / META} is corrupt (not JSON): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory / META} is not a {FORMAT} metadata file")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"checkpoint version {meta.get('version')!r} is newer than this leanformer reads ({VERSION})")
    if not (directory / TENSORS).is_file():
        raise CheckpointError(f"{directory} has no {TENSORS}")
    return meta


def _build_model(directory: Path, meta: dict) -> nn.Module:
    info = meta["model"]
    if info.get("kind") != "transformers":
        raise CheckpointError(f"checkpoint holds a plain torch model ({info.get('module')}.{info.get('class')}); "
                              "pass model=<a fresh float instance of it> to load_quantized")
    import transformers

    cls = getattr(transformers, info["class"], None)
    if cls is None:
        raise CheckpointError(f"transformers has no class {info['class']!r} (saved with a different version?)")
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    return cls(config)


def load_quantized(directory: str | os.PathLike, *, model: nn.Module | None = None,
                   device: str | torch.device | None = None, verify: bool = True) -> nn.Module:
    """Rebuild a model saved by ``save_quantized``; raises ``CheckpointError`` on anything inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = _read_meta(directory)
    if verify and meta.get("sha256") != _sha256(directory / TENSORS):
        raise CheckpointError(f"{directory / TENSORS} is corrupt or was modified (sha256 mismatch)")
    try:
        tensors = load_file(str(directory / TENSORS), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {directory / TENSORS}: {exc}") from exc
    if model is None:
        model = _build_model(directory, meta)
    elif type(model).__name__ != meta["model"]["class"]:
        raise CheckpointError(f"checkpoint holds a {meta['model']['class']}, got a {type(model).__name__}")
    # parents before children: a wrapper (FusedResidualNorm) takes the stock block's children, which the
    # entries after it then replace
    for name, spec in sorted(meta["modules"].items(), key=lambda item: item[0].count(".")):
        spec = dict(spec)
        cls = QUANTIZED_MODULES.get(spec.pop("type"))
        if cls is None:
            raise CheckpointError(f"unknown quantized module type for {name!r}")
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(f"checkpoint module {name!r} does not exist in the {type(model).__name__}") from exc
        try:
            new = cls.wrap(old, spec) if hasattr(cls, "wrap") else cls.from_spec(spec)  # wrappers keep old's children
        except (AttributeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint module {name!r} ({spec.get('stock', cls.__name__)}) does not fit the "
                                  f"model's {type(old).__name__}: {exc}") from exc
        old_shape = _float_shape(old)
        if old_shape is not None and old_shape != _float_shape(new):
            raise CheckpointError(f"checkpoint does not match the model: {name!r} is {tuple(old_shape)} in the model "
                                  f"but {tuple(_float_shape(new))} in the checkpoint")
        model.set_submodule(name, new)
    # safetensors hands out tensors at arbitrary byte offsets; _weight_int8pack_mm segfaults on a weight that
    # is not 64-byte aligned (seen here), so every tensor gets a fresh, aligned allocation.
    tensors = {k: v.clone() for k, v in tensors.items()}
    for key, target in meta.get("aliases", {}).items():
        if target not in tensors:
            raise CheckpointError(f"alias {key!r} -> {target!r} points at a missing tensor")
        tensors[key] = tensors[target]
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not match the model: {str(exc).splitlines()[0]} ...") from exc
    if meta.get("attention") == ATTENTION_NAME:
        use_short_attention_(model)
    if meta.get("fast_layers"):
        from .fast_layer import use_fast_layers_

        use_fast_layers_(model)
    if device is not None:
        model.to(device)
    return model.eval()



def _float_shape(module: nn.Module) -> tuple | None:
    """The float weight shape a module stands for (quantized or not), or None if it has none."""
    shape = getattr(module, "weight_shape", None)
    if shape is not None:
        return tuple(shape)
    if hasattr(module, "_n") and hasattr(module, "_k"):
        return (module._n, module._k)
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
