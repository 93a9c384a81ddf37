"""Tiny models, data and a training loop shared by the distributed tests (parent and ranks).

`ToyNet` covers the awkward parameter kinds: a frozen layer, a weight tied between two layers,
a layer never used (``grad`` stays None) and a layer used only by the rows of the second half of
the batch — so under 2-rank data parallelism rank 0 has no gradient for it while rank 1 does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model import ModelConfig, TransformerLM

BATCH = 8  # full-batch rows; each of 2 ranks gets BATCH // 2
LM_CONFIG = ModelConfig(
    vocab_size=32,
    context_length=8,
    d_model=16,
    num_layers=2,
    num_heads=2,
    d_ff=32,
    tie_embeddings=True,
)


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.frozen = nn.Linear(16, 16)
        self.frozen.requires_grad_(False)
        self.mid = nn.Linear(16, 16)
        self.tied = nn.Linear(16, 16)
        self.tied.weight = self.mid.weight  # one Parameter used by two layers
        self.extra = nn.Linear(16, 16)  # used only for rows with flag set
        self.unused = nn.Linear(4, 4)  # never called
        self.head = nn.Linear(16, 6)

    def forward(self, x: Tensor, flag: Tensor) -> Tensor:
        h = torch.tanh(self.frozen(torch.relu(self.inp(x))))
        h = torch.tanh(self.tied(torch.tanh(self.mid(h))))
        if flag.any():
            h = h + flag[:, None] * self.extra(h)
        return self.head(h)


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "toy":
        return ToyNet()
    model = TransformerLM.from_config(LM_CONFIG)
    model.ln_final.weight.requires_grad_(False)  # a frozen parameter in the real model
    return model


def make_batches(kind: str, steps: int) -> list[tuple[Tensor, ...]]:
    """`steps` full batches of BATCH rows, the same in every process (fixed generator)."""
    g = torch.Generator().manual_seed(1234)
    if kind == "toy":
        flag = (torch.arange(BATCH) >= BATCH // 2).float()
        return [
            (torch.randn(BATCH, 6, generator=g), flag, torch.randn(BATCH, 6, generator=g))
            for _ in range(steps)
        ]
    ids = [torch.randint(0, 32, (BATCH, 9), generator=g) for _ in range(steps)]
    return [(t[:, :-1], t[:, 1:]) for t in ids]


def loss_fn(kind: str, model: Callable, batch: tuple[Tensor, ...]) -> Tensor:
    """Mean loss over the rows of `batch` (so equal slices average to the full-batch loss)."""
    if kind == "toy":
        x, flag, y = batch
        return F.mse_loss(model(x, flag), y)
    ids, targets = batch
    return F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())


def rows(batch: tuple[Tensor, ...], start: int, stop: int) -> tuple[Tensor, ...]:
    return tuple(t[start:stop] for t in batch)


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on matrices, none on vectors (biases, norms) — two groups, as trainers do."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2]},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def lr_at(step: int) -> float:
    return 1e-2 * (step + 1) / 3
