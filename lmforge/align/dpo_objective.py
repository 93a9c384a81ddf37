"""DPO as an Objective of the one trainer (`lmforge.train.objective`); losses: `align.dpo`.

    pairs  → read_preference_pairs(dpo.data): JSONL {"prompt", "chosen", "rejected"}
    rows   → preference_rows(pairs, tokenizer, context, dpo.template): 2N rows, chosen then
             rejected, each prompt + response + <|endoftext|> (`lmforge.align.data` layout)
    step k → micro-batches of `train.batch_size` pairs from an endless sequence of epochs, each
             epoch a permutation of the pairs drawn from seed = train.seed + epoch
    loss   → one forward of the policy over the batch's 2B rows, summed response log-probs,
             `dpo_loss(..., dpo.beta, dpo.loss_type, lengths)` against the reference's

The reference is frozen: the initial policy (the trainer hands the factory its model while it
still holds the base's weights), or the model in `dpo.reference` (a run or HuggingFace
directory with the same tokenizer). Its log-probs never change, so with
`dpo.precompute_reference` they are computed once up front, for every training and held-out
pair, when the table fits (`reference_table_bytes`: 8 bytes a pair, checked against the
device's free memory with `fits_in_memory`); the reference model is then dropped, and each step
runs the policy alone: half the forward passes of computing the reference per batch (which is
what happens otherwise, under no_grad, with the reference kept in memory). The table is filled
in the batches of the first epoch (and of `evaluate`), and the reference always runs in float32
outside autocast, so both ways give bit-identical reference log-probs and losses there
(tests/align/test_dpo.py).

The data position is the number of micro-batches drawn (the order is a function of the seed and
the epoch, no RNG stream is consumed), so the state is one integer and resuming is exact.
`step_metrics` reports over the steps since the last record: preference accuracy ("pref_acc",
chosen reward > rejected reward), "reward_margin", "reward_chosen", "reward_rejected" (the
implicit rewards β·(log π - log π_ref), means over pairs) and "epoch". `evaluate` reports the
same on the held-out pairs (`dpo.val_data`, or a `dpo.val_fraction` slice of `dpo.data`) as
"val_pref_acc", "val_reward_margin", ..., and "val_dpo_loss".
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lmforge.align.data import SFTDataset
from lmforge.align.dpo import (
    LOSS_TYPES,
    check_beta,
    dpo_loss,
    preference_rows,
    sequence_log_probs,
)
from lmforge.config import ConfigError, TrainConfig
from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.base import read_jsonl_objects
from lmforge.model.accounting import fits_in_memory
from lmforge.tokenizer.split import val_document_mask
from lmforge.train.checkpoint import CheckpointError

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

Batch = dict[str, Tensor]  # preference_rows batch + "pairs" (B,) and "ref_logps" (2B,)
Pair = tuple[str, str, str, str]  # (prompt, chosen, rejected, source "file.jsonl:12")
FIELDS = ("prompt", "chosen", "rejected")
METRICS = ("pref_acc", "reward_margin", "reward_chosen", "reward_rejected")


def read_preference_pairs(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a JSONL file of {"prompt", "chosen", "rejected"} strings (blank lines
    skipped). InputError naming file:line for a line that is not such an object (not JSON, a
    missing or non-string field, an empty prompt, chosen equal to rejected), InputError for a
    file without pairs, PathNotFound for no file."""
    path = Path(path)
    pairs = []
    for n, obj in read_jsonl_objects(path, 'preference pairs {"prompt", "chosen", "rejected"}'):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise InputError(f"{where}: a pair is a JSON object with "
                             f"{', '.join(FIELDS)}; got a {type(obj).__name__}")
        for key in FIELDS:
            if not isinstance(obj.get(key), str):
                got = "is missing" if key not in obj else f"is a {type(obj[key]).__name__}"
                raise InputError(f"{where}: {key!r} {got}; every pair needs the strings "
                                 f"{', '.join(FIELDS)}")
        if not obj["prompt"].strip():
            raise InputError(f"{where}: the prompt is empty; give the instruction text")
        if obj["chosen"] == obj["rejected"]:
            raise InputError(f"{where}: chosen and rejected are the same text, so the pair "
                             "states no preference; drop it or fix it")
        pairs.append((obj["prompt"], obj["chosen"], obj["rejected"], where))
    if not pairs:
        raise InputError(f"{path} holds no preference pairs; give one JSON object per line "
                         'with "prompt", "chosen" and "rejected"')
    return pairs


def reference_table_bytes(n_pairs: int) -> int:
    """Bytes of a precomputed reference table: two float32 log-probs per pair."""
    return 2 * 4 * n_pairs


class DPOObjective:
    """DPO on the 2N `rows` of N pairs in micro-batches of `batch_size` pairs (module
    docstring). `reference` is the frozen reference model (it may be the policy's own module
    while that still holds the initial weights, if `precompute` is true: it is used only
    here, before training). `val_rows`: held-out pairs laid out the same way."""

    name = "dpo"

    def __init__(self, rows: SFTDataset, reference: nn.Module, *, beta: float,
                 loss_type: str = "sigmoid", batch_size: int, seed: int,
                 device: torch.device, val_rows: SFTDataset | None = None,
                 eval_batch_size: int = 16, precompute: bool = True):
        check_beta(beta)
        if loss_type not in LOSS_TYPES:
            raise InvalidArgument(f"unknown DPO loss_type {loss_type!r}; use one of {LOSS_TYPES}")
        self.rows, self.val_rows = rows, val_rows
        self.beta, self.loss_type = beta, loss_type
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.eval_batch_size = eval_batch_size
        self.pairs = len(rows) // 2
        self.per_epoch = math.ceil(self.pairs / batch_size)
        self.drawn = 0  # micro-batches drawn so far
        self.reference: nn.Module | None = reference  # used under no_grad, in eval mode
        self.table: Tensor | None = None  # (2N,) reference log-probs of `rows`
        self.val_table: Tensor | None = None
        self._sums: dict[str, float] = dict.fromkeys(METRICS, 0.0)
        self._counted = 0  # pairs behind `_sums`
        if precompute:
            self.table = self._reference_table(rows, self._epoch_order(0), batch_size)
            if val_rows is not None:
                n = len(val_rows) // 2
                self.val_table = self._reference_table(val_rows, torch.arange(n),
                                                       eval_batch_size)
            self.reference = None  # the table replaces it: the memory is freed

    @classmethod
    def from_config(cls, config: TrainConfig, model: nn.Module, tokenizer: Tokenizer,
                    device: torch.device) -> DPOObjective:
        """`dpo.data` (and `dpo.val_data` or a `dpo.val_fraction` slice) read and laid out for
        the model's context; the reference is `dpo.reference`'s model or `model` (holding the
        initial weights; copied unless the reference log-probs are precomputed)."""
        d, t = config.dpo, config.train
        pairs = read_preference_pairs(d.data)
        val_pairs = read_preference_pairs(d.val_data) if d.val_data else None
        if val_pairs is None and d.val_fraction > 0:
            pairs, val_pairs = split_pairs(pairs, d.val_fraction, t.seed)
        n = len(pairs) + len(val_pairs or ())
        precompute = d.precompute_reference and fits_in_memory(reference_table_bytes(n), device)
        if d.reference:
            reference = load_reference(d.reference, tokenizer, config, device)
        else:
            reference = model if precompute else copy.deepcopy(model).requires_grad_(False)
        context = min(config.model.context_length,
                      getattr(getattr(reference, "config", None), "context_length", math.inf))
        rows = preference_rows(pairs, tokenizer, int(context), d.template)
        val_rows = preference_rows(val_pairs, tokenizer, int(context), d.template) \
            if val_pairs else None
        return cls(rows, reference, beta=d.beta, loss_type=d.loss_type,
                   batch_size=t.batch_size, seed=t.seed, device=device, val_rows=val_rows,
                   eval_batch_size=t.eval_batch_size, precompute=precompute)

    # ----------------------------------------------------------------------- batches and loss

    def steps_per_epoch(self, micro_batches: int) -> int:
        """Optimizer steps of one pass over the pairs at `micro_batches` per step."""
        return math.ceil(self.per_epoch / micro_batches)

    def _epoch_order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.pairs, generator=generator)

    def _batch(self, rows: SFTDataset, pairs: Tensor) -> Batch:
        """Pairs `pairs` of `rows`: their chosen rows, then their rejected rows (2B rows)."""
        n = len(rows) // 2
        batch = rows.batch(torch.cat([pairs, pairs + n]))
        batch["pairs"] = pairs
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def _reference_logps(self, batch: Batch) -> Tensor:
        """(2B,) reference log-probs of a batch: float32, outside any autocast."""
        assert self.reference is not None
        was_training = self.reference.training
        self.reference.eval()
        with torch.autocast(self.device.type, enabled=False):
            logps = sequence_log_probs(self.reference, batch).float()
        self.reference.train(was_training)
        return logps

    def _reference_table(self, rows: SFTDataset, order: Tensor, batch_size: int) -> Tensor:
        table = torch.empty(len(rows), device=self.device)
        n = len(rows) // 2
        for at in range(0, len(order), batch_size):
            pairs = order[at : at + batch_size]
            table[torch.cat([pairs, pairs + n]).to(self.device)] = \
                self._reference_logps(self._batch(rows, pairs))
        return table

    def next_batches(self, step: int, n: int) -> list[Batch]:
        out = []
        for _ in range(n):
            epoch, index = divmod(self.drawn, self.per_epoch)
            pairs = self._epoch_order(epoch)[index * self.batch_size:
                                             (index + 1) * self.batch_size]
            batch = self._batch(self.rows, pairs)
            batch["ref_logps"] = self._lookup(self.table, batch, len(self.rows))
            out.append(batch)
            self.drawn += 1
        return out

    def _lookup(self, table: Tensor | None, batch: Batch, rows: int) -> Tensor:
        if table is None:
            return self._reference_logps(batch)
        pairs = batch["pairs"]
        return table[torch.cat([pairs, pairs + rows // 2])]

    def _loss(self, net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logps = sequence_log_probs(net, batch)
        ref, B = batch["ref_logps"], len(batch["pairs"])
        lengths = batch["response_mask"].sum(-1)
        return dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], self.beta, self.loss_type,
                        lengths[:B], lengths[B:])

    def loss(self, net: nn.Module, batch: Batch) -> Tensor:
        loss, meta = self._loss(net, batch)
        self._add(meta)
        return loss

    def batch_tokens(self, batch: Batch) -> int:
        return int(batch["lengths"].sum())

    # ---------------------------------------------------------------------------- metrics

    def _add(self, meta: dict[str, Tensor]) -> None:
        pairs = len(meta["losses"])
        for key, value in zip(METRICS, _means(meta), strict=True):
            self._sums[key] += value * pairs
        self._counted += pairs

    def step_metrics(self) -> dict[str, float]:
        out = {k: v / self._counted for k, v in self._sums.items()} if self._counted else {}
        self._sums, self._counted = dict.fromkeys(METRICS, 0.0), 0
        return {**out, "epoch": round(self.drawn / self.per_epoch, 4)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out "val_dpo_loss", "val_pref_acc", "val_reward_margin", "val_reward_chosen",
        "val_reward_rejected" (means over the held-out pairs); {} without held-out pairs."""
        if self.val_rows is None:
            return {}
        was_training = model.training
        model.eval()
        n = len(self.val_rows) // 2
        sums, loss = dict.fromkeys(METRICS, 0.0), 0.0
        for at in range(0, n, self.eval_batch_size):
            pairs = torch.arange(at, min(at + self.eval_batch_size, n))
            batch = self._batch(self.val_rows, pairs)
            batch["ref_logps"] = self._lookup(self.val_table, batch, len(self.val_rows))
            mean_loss, meta = self._loss(model, batch)
            loss += float(mean_loss) * len(pairs)
            for key, value in zip(METRICS, _means(meta), strict=True):
                sums[key] += value * len(pairs)
        model.train(was_training)
        return {"val_dpo_loss": loss / n, **{f"val_{k}": v / n for k, v in sums.items()}}

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"batches_drawn": self.drawn, "pairs": self.pairs, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["pairs"], state["batch_size"])
        if saved != (self.pairs, self.batch_size):
            raise CheckpointError(
                f"the checkpoint was trained on {saved[0]} preference pairs in micro-batches of "
                f"{saved[1]}; this run has {self.pairs} pairs and micro-batches of "
                f"{self.batch_size}: resume with the same dpo.data, dpo.val_fraction and "
                "train.batch_size (or start a new run with train.init_from)")
        self.drawn = state["batches_drawn"]


def _means(meta: dict[str, Tensor]) -> tuple[float, float, float, float]:
    """(accuracy, margin, chosen reward, rejected reward) means of a `dpo_loss` metadata."""
    return (float(meta["accuracy"]), float(meta["margins"].mean()),
            float(meta["rewards_chosen"].mean()), float(meta["rewards_rejected"].mean()))


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training, held-out) pairs: round(`fraction` · n) of them, at least one and at most n - 1,
    drawn with `seed` (`lmforge.tokenizer.split.val_document_mask`, the corpus split's rule).

    >>> train, held = split_pairs([("p", "a", "b", str(i)) for i in range(10)], 0.2, seed=0)
    >>> len(train), len(held)
    (8, 2)
    """
    if len(pairs) < 2:
        raise InputError(f"dpo.val_fraction needs at least 2 pairs to split, {pairs[0][3]} is "
                         "the only one; add pairs or give dpo.val_data")
    held = val_document_mask(len(pairs), fraction, seed)
    return ([p for p, h in zip(pairs, held, strict=True) if not h],
            [p for p, h in zip(pairs, held, strict=True) if h])


def load_reference(source: str, tokenizer: Tokenizer, config: TrainConfig,
                   device: torch.device) -> nn.Module:
    """The frozen reference model of `dpo.reference` (a run or HuggingFace Llama directory);
    ConfigError unless it has the policy's vocabulary and tokenizer."""
    from lmforge.model import TransformerLM
    from lmforge.train.init_from import base_model_config, load_initial_weights

    shape = base_model_config(source)
    if shape.vocab_size != config.model.vocab_size:
        raise ConfigError(f"dpo.reference {source} has vocab_size {shape.vocab_size} but the "
                          f"policy has {config.model.vocab_size}; the reference must share the "
                          "policy's tokenizer (use the base model or a model trained from it)")
    reference = TransformerLM.from_config(shape, device=device)
    ref_tokenizer = load_initial_weights(source, reference)
    if ref_tokenizer is None or ref_tokenizer.fingerprint() != tokenizer.fingerprint():
        what = "no tokenizer" if ref_tokenizer is None else "another tokenizer than the policy"
        raise ConfigError(f"dpo.reference {source} has {what}, so its log-probs may score other "
                          "tokens than the policy's; use a reference trained with the policy's "
                          "tokenizer (e.g. the base model)")
    return reference.requires_grad_(False)
