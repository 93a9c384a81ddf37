"""Supervised fine-tuning as an Objective of the one trainer (`lmforge.train.objective`).

    pairs  → read_sft_examples(sft.data, sft.template)                 (lmforge.align.data)
    rows   → get_packed_sft_dataset(pairs, tokenizer, context_length, packing=sft.packing)
    step k → micro-batches k·n … k·n + n - 1 of an endless sequence of epochs, each epoch a
             fresh shuffle of the rows (seed = train.seed + epoch): `iterate_batches`
    loss   → sft_batch_loss: mean NLL per response token (`lmforge.align.sft`), documents
             packed without attention across them (document_ids to the model's forward)

The data position is the number of micro-batches drawn, so the state is one integer (plus the
dataset's size, to refuse resuming on other data) and resuming is exact. `evaluate` is the
token-weighted response NLL on `sft.val_data` ("val_loss", nats per response token; the trainer
adds "val_ppl"). `step_metrics` reports the epoch reached (fractional).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lmforge.align.data import (
    SFTDataset,
    get_packed_sft_dataset,
    iterate_batches,
    num_batches,
    read_sft_examples,
)
from lmforge.align.sft import get_response_log_probs, sft_batch_loss
from lmforge.config import TrainConfig
from lmforge.train.checkpoint import CheckpointError

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

Batch = dict[str, Tensor]  # `lmforge.align.data` batch, on the training device


class SFTObjective:
    """SFT on `dataset` in micro-batches of `batch_size` rows (module docstring)."""

    name = "sft"

    def __init__(self, dataset: SFTDataset, *, batch_size: int, seed: int,
                 device: torch.device, val_dataset: SFTDataset | None = None,
                 eval_batch_size: int = 16):
        self.dataset, self.val_dataset = dataset, val_dataset
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.eval_batch_size = eval_batch_size
        self.per_epoch = num_batches(dataset, batch_size)
        self.drawn = 0  # micro-batches drawn so far

    @classmethod
    def from_config(cls, config: TrainConfig, model: nn.Module, tokenizer: Tokenizer,
                    device: torch.device) -> SFTObjective:
        """`sft.data` (and `sft.val_data`) read, templated with `sft.template`, tokenized with
        `tokenizer` and laid out in rows of the model's context (packed unless `sft.packing`
        is false); micro-batches of `train.batch_size` rows."""
        s, T = config.sft, config.model.context_length

        def load(path: str) -> SFTDataset:
            pairs = read_sft_examples(path, s.template)
            return get_packed_sft_dataset(pairs, tokenizer, T, packing=s.packing)

        return cls(load(s.data), batch_size=config.train.batch_size, seed=config.train.seed,
                   device=device, val_dataset=load(s.val_data) if s.val_data else None,
                   eval_batch_size=config.train.eval_batch_size)

    def steps_per_epoch(self, micro_batches: int) -> int:
        """Optimizer steps of one pass over the rows at `micro_batches` per step."""
        return math.ceil(self.per_epoch / micro_batches)

    def next_batches(self, step: int, n: int) -> list[Batch]:
        out = []
        for _ in range(n):
            epoch, index = divmod(self.drawn, self.per_epoch)
            batches = iterate_batches(self.dataset, self.batch_size, shuffle=True,
                                      seed=self.seed + epoch, start=index)
            out.append({k: v.to(self.device) for k, v in next(batches).items()})
            self.drawn += 1
        return out

    def loss(self, net: nn.Module, batch: Batch) -> Tensor:
        return sft_batch_loss(net, batch)[0]

    def batch_tokens(self, batch: Batch) -> int:
        return int(batch["lengths"].sum())

    def step_metrics(self) -> dict[str, float]:
        return {"epoch": round(self.drawn / self.per_epoch, 4)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"val_loss": NLL per response token of `sft.val_data`}; {} without it."""
        if self.val_dataset is None:
            return {}
        was_training = model.training
        model.eval()
        nll, tokens = 0.0, 0
        for batch in iterate_batches(self.val_dataset, self.eval_batch_size, shuffle=False):
            b = {k: v.to(self.device) for k, v in batch.items()}
            log_probs = get_response_log_probs(model, b["input_ids"], b["labels"],
                                               document_ids=b.get("document_ids"))["log_probs"]
            mask = b["response_mask"]
            nll -= float((log_probs.float() * mask).sum())
            tokens += int(mask.sum())
        model.train(was_training)
        return {"val_loss": nll / max(tokens, 1)}

    def state_dict(self) -> dict:
        return {"batches_drawn": self.drawn, "rows": len(self.dataset),
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["rows"], state["batch_size"])
        if saved != (len(self.dataset), self.batch_size):
            raise CheckpointError(
                f"the checkpoint was trained on {saved[0]} SFT rows in micro-batches of "
                f"{saved[1]}; this run has {len(self.dataset)} rows and micro-batches of "
                f"{self.batch_size}: resume with the same sft.data, sft.packing and "
                "train.batch_size (or start a new run with train.init_from)")
        self.drawn = state["batches_drawn"]
