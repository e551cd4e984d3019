"""Embedding fidelity of a quantized encoder: cosine of mean-pooled sentence embeddings vs the float model.

Mean pooling over non-padding tokens followed by L2 normalisation, as sentence-transformers does for
all-MiniLM-L6-v2. Nearest-neighbour agreement: for each sentence, is its nearest other sentence the same
under both models?
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SENTENCES", "embed", "compare", "Fidelity", "read_sentences"]

# 40 built-in sentences of mixed topic, length and register (written for this project).
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A dog was barking at the mail carrier all morning.",
    "Quantum computers use qubits that can be in superposition.",
    "The stock market fell sharply after the interest rate announcement.",
    "She baked a chocolate cake for her grandmother's birthday.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "The train to Berlin was delayed by forty minutes.",
    "How do I reset my password if I no longer have access to my email?",
    "Regular exercise lowers the risk of heart disease.",
    "The orchestra played Beethoven's ninth symphony to a full hall.",
    "Neural networks are trained with gradient descent.",
    "He forgot his umbrella and got soaked on the way home.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Volcanic eruptions can cool the planet for several years.",
    "Please submit the quarterly report by Friday afternoon.",
    "The children built a sandcastle near the water's edge.",
    "Compilers translate source code into machine instructions.",
    "The museum reopened after a long renovation.",
    "Coffee prices have risen because of poor harvests in Brazil.",
    "A good night's sleep improves memory and concentration.",
    "The referee showed a red card in the final minute.",
    "Whales communicate with songs that travel across oceans.",
    "The new smartphone has a larger battery and a faster chip.",
    "They hiked to the summit before sunrise.",
    "Inflation erodes the purchasing power of savings.",
    "The library extended its opening hours during exams.",
    "Antibiotics do not work against viral infections.",
    "The spacecraft entered orbit around Mars last night.",
    "My grandfather tells stories about growing up on a farm.",
    "Sorting algorithms differ in their time and memory cost.",
    "The bakery on the corner sells fresh bread every morning.",
    "Heavy rain caused flooding in several coastal towns.",
    "Learning a second language takes patience and practice.",
    "The company announced record profits for the year.",
    "Bees are essential pollinators for many crops.",
    "The detective finally found the missing piece of evidence.",
    "Solar panels convert light directly into electricity.",
    "We watched the fireworks from the top of the hill.",
    "The court ruled that the contract was invalid.",
    "Is it safe to swim in the lake after a storm?",
]


@dataclass(frozen=True)
class Fidelity:
    mean_cos: float
    worst_cos: float
    nn_agreement: float
    n: int

    def as_dict(self) -> dict:
        return {"mean_cos": self.mean_cos, "worst_cos": self.worst_cos, "nn_agreement": self.nn_agreement, "n": self.n}


def read_sentences(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sentences file {str(path)!r} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise ValueError(f"sentences file {str(path)!r} needs at least 2 non-empty lines, found {len(lines)}")
    return lines


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], *, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """(S, H) L2-normalised mean-pooled embeddings."""
    outs = []
    device = next(model.parameters(), torch.empty(0)).device
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state.float()  # (B, S, H)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, S, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        outs.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(outs)


def compare(ref: torch.Tensor, test: torch.Tensor) -> Fidelity:
    """Cosine per sentence and nearest-neighbour agreement between two (S, H) normalised embedding sets."""
    cos = (ref * test).sum(-1)  # (S,)
    def nearest(e):
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(-1)
    nn = (nearest(ref) == nearest(test)).float().mean()
    return Fidelity(float(cos.mean()), float(cos.min()), float(nn), int(ref.shape[0]))
