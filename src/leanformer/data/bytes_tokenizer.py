"""A byte-level tokenizer: ids 0..255 are bytes, then a few specials. Needs no vocabulary file."""
from __future__ import annotations

import torch

BOS, EOS, PAD, MASK = 256, 257, 258, 259
VOCAB_SIZE = 260


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as int64 token ids, shape (len,)."""
    data = bytearray(text.encode("utf-8"))
    return torch.frombuffer(data, dtype=torch.uint8).to(torch.int64) if data else torch.empty(0, dtype=torch.int64)


def decode(ids: torch.Tensor) -> str:
    ids = ids.flatten().tolist()
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
