"""Training data: text -> token stream -> fixed-length windows, sampled in a resumable, shardable order.

* Text: the built-in corpus (`leanformer.data.corpus.stdlib_docstrings`) or a user's file / folder.
* Tokens: the byte tokenizer for random-init named models; the model directory's own tokenizer for
  Hugging Face directories (e.g. MiniLM, for masked-LM fine-tuning).
* Order: a seeded permutation per epoch. The whole position is (epoch, pos), two ints, so a checkpoint can
  store it as tensors and `--resume` continues with the very same batches. Every rank walks the same
  global order and takes its own slice of each global batch: the ranks together see exactly the batch a
  single process would, which is what makes DDP runs comparable to single-process ones.
* Masked LM: 15% of positions (80% [MASK], 10% random, 10% kept), drawn from a generator seeded by the
  window's global index, so the masks do not depend on rank, micro-batch or resume point.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tex", ".html", ".xml", ".yaml", ".yml", ""}
IGNORE = -100  # target id the loss skips (torch's cross_entropy default)


class DataError(ValueError):
    """The data cannot be used (missing, empty, too small for one window)."""


def load_text(data: str | None) -> tuple[str, str]:
    """(text, description). ``None`` means the built-in corpus."""
    if data is None:
        from leanformer.data.corpus import stdlib_docstrings

        return stdlib_docstrings(), "built-in corpus (Python stdlib docstrings)"
    path = Path(data)
    if not path.exists():
        raise DataError(f"data path {data!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"data folder {data!r} holds no text files ({', '.join(sorted(s for s in TEXT_SUFFIXES if s))})")
        text = "\n\n".join(_read(p) for p in files)
        desc = f"{len(files)} files under {data}"
    else:
        text, desc = _read(path), str(data)
    if not text.strip():
        raise DataError(f"data {data!r} is empty")
    return text, desc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class Tokenizer:
    """Just what the data pipeline needs from a tokenizer: encode, and the special ids for masked LM."""

    name: str
    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    special: tuple[int, ...]
    _hf: object | None = None

    def encode(self, text: str) -> torch.Tensor:  # (n,) int64
        if self._hf is None:
            from leanformer.data.bytes_tokenizer import encode

            return encode(text)
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        ids = self._hf(paragraphs, add_special_tokens=False, verbose=False)["input_ids"]
        sep = [self.sep_id]  # paragraph boundary, as BERT pre-training separates segments
        flat = [t for para in ids for t in (*para, *sep)]
        return torch.tensor(flat, dtype=torch.int64)


def make_tokenizer(model_dir: Path | None, vocab_size: int) -> Tokenizer:
    """The model directory's tokenizer, else the byte tokenizer (ids 0..259 fit every named model)."""
    if model_dir is None:
        from leanformer.data import bytes_tokenizer as bt

        if vocab_size < bt.VOCAB_SIZE:
            raise DataError(f"model vocabulary ({vocab_size}) is smaller than the byte tokenizer's ({bt.VOCAB_SIZE})")
        return Tokenizer("bytes", vocab_size, bt.BOS, bt.EOS, bt.MASK, (bt.BOS, bt.EOS, bt.PAD, bt.MASK))
    import transformers

    try:
        hf = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the tokenizer in {str(model_dir)!r}: {exc}") from exc
    hf.model_max_length = 10**9  # we cut windows ourselves; silence the "longer than maximum" warning
    cls_id = hf.cls_token_id if hf.cls_token_id is not None else hf.bos_token_id
    sep_id = hf.sep_token_id if hf.sep_token_id is not None else hf.eos_token_id
    mask_id = hf.mask_token_id if hf.mask_token_id is not None else -1
    return Tokenizer(type(hf).__name__, vocab_size, cls_id, sep_id, mask_id, tuple(hf.all_special_ids), hf)


class WindowData:
    """Fixed-length windows over a token stream, for a causal or a masked LM.

    Causal: window i is tokens[i*(S+1) : (i+1)*(S+1)]; input = first S, target = last S (shifted by one).
    Masked: window i is S-2 tokens wrapped as [CLS] ... [SEP]; targets are the original ids at masked spots.
    """

    def __init__(self, tokens: torch.Tensor, seq: int, *, masked_lm: bool, tokenizer: Tokenizer, seed: int, salt: int):
        self.seq, self.masked_lm, self.tok, self.seed, self.salt = seq, masked_lm, tokenizer, seed, salt
        self.span = seq - 2 if masked_lm else seq + 1  # raw tokens per window
        n = tokens.numel() // self.span
        self.windows = tokens[: n * self.span].view(n, self.span)  # (N, span)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(model inputs, targets) for windows ``idx``: input_ids (b, S), targets (b, S) with IGNORE."""
        rows = self.windows[idx]  # (b, span)
        if not self.masked_lm:
            return {"input_ids": rows[:, :-1].contiguous()}, rows[:, 1:].contiguous()
        b = rows.shape[0]
        ids = torch.cat([torch.full((b, 1), self.tok.cls_id), rows, torch.full((b, 1), self.tok.sep_id)], dim=1)
        targets = torch.full_like(ids, IGNORE)
        for r, i in enumerate(idx.tolist()):
            self._mask_row(ids[r], targets[r], i)
        return {"input_ids": ids}, targets

    def _mask_row(self, ids: torch.Tensor, targets: torch.Tensor, index: int) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.salt * 7_919 + index)
        inner = ids[1:-1]  # view: edits land in ids
        candidates = ~torch.isin(inner, torch.tensor(self.tok.special, dtype=inner.dtype))
        pick = (torch.rand(inner.shape, generator=gen) < 0.15) & candidates
        if not pick.any() and candidates.any():  # every window contributes to the loss
            pick[candidates.nonzero()[0]] = True
        targets[1:-1][pick] = inner[pick]
        roll = torch.rand(inner.shape, generator=gen)
        random_ids = torch.randint(0, self.tok.vocab_size, inner.shape, generator=gen)
        inner[pick & (roll < 0.8)] = self.tok.mask_id
        swap = pick & (roll >= 0.8) & (roll < 0.9)
        inner[swap] = random_ids[swap]


class Sampler:
    """A seeded permutation per epoch, read in order; its whole state is (epoch, pos)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            gen = torch.Generator().manual_seed(self.seed * 7_777_777 + self.epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=gen), self.epoch
        return self._perm

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` window indices of the global order (crossing into the next epoch if needed)."""
        out = []
        while k > 0:
            perm = self._permutation()
            chunk = perm[self.pos: self.pos + k]
            out.append(chunk)
            k -= chunk.numel()
            self.pos += chunk.numel()
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return torch.cat(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"epoch": torch.tensor(self.epoch), "pos": torch.tensor(self.pos), "n": torch.tensor(self.n)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if int(state["n"]) != self.n:
            raise DataError(f"the checkpoint's data had {int(state['n'])} training windows, this data has {self.n}: "
                            "resume with the same --data and --seq")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


@dataclass
class Dataset:
    train: WindowData
    val: WindowData
    tokenizer: Tokenizer
    description: str
    n_tokens: int


def build_dataset(data: str | None, *, seq: int, masked_lm: bool, tokenizer: Tokenizer, seed: int,
                  val_windows: int) -> Dataset:
    """Tokenize, then hold out the last windows (up to 5%, at most ``val_windows``) for validation."""
    text, desc = load_text(data)
    tokens = tokenizer.encode(text)
    span = seq - 2 if masked_lm else seq + 1
    n = tokens.numel() // span
    if n < 2:
        raise DataError(f"data {desc!r} has {tokens.numel()} tokens: too few for two windows of {span} "
                        f"(one to train, one to validate); use more text or a smaller --seq")
    n_val = max(1, min(val_windows, n // 20))
    cut = (n - n_val) * span
    train = WindowData(tokens[:cut], seq, masked_lm=masked_lm, tokenizer=tokenizer, seed=seed, salt=0)
    val = WindowData(tokens[cut:], seq, masked_lm=masked_lm, tokenizer=tokenizer, seed=seed, salt=1)
    return Dataset(train, val, tokenizer, desc, tokens.numel())
