"""SFT data: JSONL examples → (prompt, response) pairs → packed token rows → training batches.

    pairs = read_sft_examples("train.jsonl", template="alpaca")        # file:line in errors
    data = get_packed_sft_dataset(pairs, tokenizer, seq_len=model.config.context_length)
    for batch in iterate_batches(data, batch_size=8, shuffle=True, seed=epoch):
        loss, _ = sft_batch_loss(model, batch)                         # lmforge.align.sft

A document is prompt_ids + response_ids + [<|endoftext|>] (`add_eos`: the model learns to stop,
and `lmforge generate` / `serve` stop at that token); CS336's shift makes it len-1 positions
with input_ids = all but the last token, labels = all but the first, and response_mask True
where the label is a response token (the end-of-text label included). Packing places whole
documents into rows of `seq_len` positions by best-fit decreasing (every document sorted by
length, longest first, goes to the row it fills most tightly; a new row when none has room),
so rows are nearly full and no document is split. Each position also carries its document id
(the pair's index; -1 on padding) and its position inside the document: the model, given
`document_ids`, attends only within a document and restarts RoPE positions at each one
(`TransformerLM.forward`), so a packed document's logits equal its logits alone. With
`packing=False` every document gets its own row (the padded baseline, CS336's layout).

Batches (`iterate_batches`) are dicts of tensors, all (batch, width) unless noted, width = the
longest row of the batch (trailing padding columns are trimmed):

    "input_ids"      int64  model input
    "labels"         int64  next token (padding id where there is none)
    "response_mask"  bool   True where the label is a response token: the SFT loss positions
    "lengths"        int64 (batch,)  real (non-padding) positions per row
    "document_ids"   int64  packed datasets only: pass to the model's forward (-1 = padding)
    "positions"      int64  packed datasets only: position inside the document (what the model
                            derives from document_ids; for models that take position ids)

Examples too long for `seq_len` (prompt + response + end-of-text - 1 > seq_len) are an error
naming the example (file:line) by default; `drop_long=True` drops and counts them instead
(`SFTDataset.dropped`). Text holding a special-token string is refused (file:line), as at
every other entry point.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lmforge.align.sft import encode_text, pad_token_id
from lmforge.align.templates import format_example
from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.base import read_jsonl_objects
from lmforge.model.layers import document_positions
from lmforge.tokenizer import Tokenizer, TokenizerInputError

EXAMPLE_SHAPES = "{'prompt', 'response'}, Alpaca {'instruction', 'input', 'output'} or " \
    "{'messages': [...]}"


class SFTPair(NamedTuple):
    """One training example as text; `source` ("file.jsonl:12") names it in errors."""

    prompt: str
    response: str
    source: str = ""


def read_sft_examples(path: str | os.PathLike, template: str = "alpaca") -> list[SFTPair]:
    """The examples of a JSONL file (one object per line, blank lines skipped) as pairs.

    Each line is one of the shapes of `lmforge.align.templates`, rendered with `template`.
    InputError naming file:line for a line that is not JSON, not UTF-8 or not a usable example
    (missing or empty prompt/response, wrong types); InputError for a file with no examples;
    PathNotFound when there is no such file.
    """
    path = Path(path)
    pairs = []
    for n, obj in read_jsonl_objects(path, f"SFT examples ({EXAMPLE_SHAPES})"):
        try:
            prompt, response = format_example(obj, template)  # type: ignore[arg-type]
        except InvalidArgument as e:
            raise InputError(f"{path}:{n}: {e}") from None
        pairs.append(SFTPair(prompt, response, f"{path}:{n}"))
    if not pairs:
        raise InputError(f"{path} holds no examples; give one JSON object per line, "
                         f"{EXAMPLE_SHAPES}")
    return pairs


@dataclass
class SFTDataset:
    """Token rows of SFT documents; each tensor (rows, seq_len) unless noted (module docstring)."""

    input_ids: Tensor  # int64
    labels: Tensor  # int64, the padding id where no label
    response_mask: Tensor  # bool
    document_ids: Tensor  # int64, the pair's index; -1 on padding
    positions: Tensor  # int64, position inside the document
    lengths: Tensor  # (rows,) int64, real positions per row
    packed: bool  # several documents per row (batches carry document_ids)
    dropped: int = 0  # examples dropped for being longer than seq_len (drop_long=True)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def fill(self) -> float:
        """Fraction of positions holding document tokens (not padding)."""
        return float(self.lengths.sum()) / self.input_ids.numel()

    def batch(self, rows: Tensor | Sequence[int]) -> dict[str, Tensor]:
        """The batch of `rows` (module docstring), trimmed to its longest row."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        lengths = self.lengths[rows]
        width = int(lengths.max())
        out = {
            "input_ids": self.input_ids[rows, :width],
            "labels": self.labels[rows, :width],
            "response_mask": self.response_mask[rows, :width],
            "lengths": lengths,
        }
        if self.packed:
            out["document_ids"] = self.document_ids[rows, :width]
            out["positions"] = self.positions[rows, :width]
        return out


def get_packed_sft_dataset(
    pairs: Sequence[SFTPair | tuple[str, str]],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    packing: bool = True,
    add_eos: bool = True,
    drop_long: bool = False,
) -> SFTDataset:
    """Tokenise `pairs` and lay them out in rows of `seq_len` positions (module docstring).

    `packing`: several documents per row (best-fit decreasing), else one per row. `add_eos`:
    end each response with `<|endoftext|>`. `drop_long`: drop (and count) examples longer than
    `seq_len` instead of raising InputError. Deterministic: the same pairs give the same rows.
    """
    if seq_len < 1:
        raise InvalidArgument(f"seq_len must be a positive number of tokens, got {seq_len}")
    if not pairs:
        raise InvalidArgument("no SFT examples given; give at least one (prompt, response)")
    pad = pad_token_id(tokenizer)
    docs: list[tuple[int, list[int], int]] = []  # (pair index, tokens, prompt length)
    dropped = 0
    for i, pair in enumerate(pairs):
        where = (pair[2] if len(pair) > 2 else "") or f"example {i}"
        try:
            prompt = encode_text(tokenizer, pair[0])
            tokens = prompt + encode_text(tokenizer, pair[1]) + ([pad] if add_eos else [])
        except TokenizerInputError as e:
            special = [s for s in tokenizer.special_tokens if s in pair[0] or s in pair[1]]
            if not special:
                raise InputError(f"{where}: {e}") from None
            raise InputError(f"{where} contains the special token {special[0]!r}; examples are "
                             "text and may not write control tokens: remove it") from None
        if len(tokens) - len(prompt) < 1 or not prompt:
            raise InputError(f"{where}: the prompt and the response must each be at least one "
                             "token; give non-empty text")
        if len(tokens) - 1 > seq_len:
            if drop_long:
                dropped += 1
                continue
            raise InputError(
                f"{where} needs {len(tokens) - 1} positions (prompt {len(prompt)} + response "
                f"{len(tokens) - len(prompt)} tokens - 1), more than seq_len = {seq_len} (the "
                "model's context); shorten it, use a model with a longer context, or drop such "
                "examples (drop_long=True counts them)"
            )
        docs.append((i, tokens, len(prompt)))
    if not docs:
        raise InputError(f"all {len(pairs)} examples are longer than seq_len = {seq_len}; "
                         "nothing is left to train on")
    sizes = [len(t) - 1 for _, t, _ in docs]
    rows = pack_documents(sizes, seq_len) if packing else [[d] for d in range(len(docs))]
    return _layout(docs, rows, seq_len, pad, packing, dropped)


def _layout(docs: list[tuple[int, list[int], int]], rows: list[list[int]], seq_len: int,
            pad: int, packed: bool, dropped: int) -> SFTDataset:
    """Fill the row tensors: docs[d] goes to row r when d is in rows[r], in that order."""
    n = len(rows)
    ids = np.full((n, seq_len), pad, dtype=np.int64)
    labels = np.full((n, seq_len), pad, dtype=np.int64)
    mask = np.zeros((n, seq_len), dtype=bool)
    doc_ids = np.full((n, seq_len), -1, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for d in members:
            index, tokens, prompt_len = docs[d]
            size = len(tokens) - 1
            ids[r, at : at + size] = tokens[:-1]
            labels[r, at : at + size] = tokens[1:]
            mask[r, at + prompt_len - 1 : at + size] = True  # labels from the first response token
            doc_ids[r, at : at + size] = index
            at += size
        lengths[r] = at
    document_ids = torch.from_numpy(doc_ids)
    return SFTDataset(
        torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(mask), document_ids,
        document_positions(document_ids), torch.from_numpy(lengths), packed, dropped,
    )


def pack_documents(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: indices of `sizes` grouped into rows of total <= capacity.

    Documents go longest first (ties: lower index first) to the row with the least room that
    still fits them. Every size must be in 1..capacity.

    >>> pack_documents([5, 3, 4, 2, 6], capacity=8)
    [[4, 3], [0, 1], [2]]
    """
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free positions, row), sorted
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        size = sizes[i]
        if not 1 <= size <= capacity:
            raise InvalidArgument(f"document {i} has size {size}, not in 1..{capacity}")
        k = bisect.bisect_left(room, (size, -1))
        if k == len(room):
            rows.append([i])
            free, row = capacity - size, len(rows) - 1
        else:
            free, row = room.pop(k)
            rows[row].append(i)
            free -= size
        if free:
            bisect.insort(room, (free, row))
    return rows


def iterate_batches(
    dataset: SFTDataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    *,
    start: int = 0,
    drop_last: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """One epoch of batches of `batch_size` rows (the last one smaller unless `drop_last`).

    With `shuffle` the row order is a permutation drawn from `seed` (a new seed per epoch gives
    a new order, the same seed the same one); `start` skips that many batches of the epoch
    (resuming exactly where a run stopped). Batches are dicts (module docstring).
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for at in range(start * batch_size, stop, batch_size):
        yield dataset.batch(order[at : at + batch_size])


def num_batches(dataset: SFTDataset, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch of `iterate_batches`."""
    n = len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)
