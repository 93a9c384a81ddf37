"""Packing without cross-document attention.

Proves: per-document positions and the block-diagonal causal mask by hand; packed logits equal
each document's logits computed alone (reference, sdpa, flash, GQA, bf16, checkpointed); the
packed and the padded layout of the same examples give the same SFT loss and gradients; the
dataset's rows, labels, masks, ids and positions by hand; best-fit packing invariants; batches.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge import ENDOFTEXT
from lmforge.align.data import (
    SFTPair,
    get_packed_sft_dataset,
    iterate_batches,
    num_batches,
    pack_documents,
)
from lmforge.align.sft import sft_batch_loss
from lmforge.errors import InputError
from lmforge.model import ModelConfig, TransformerLM
from lmforge.model.layers import document_causal_mask, document_positions
from lmforge.tokenizer import Tokenizer

EOT = 256
TOK = Tokenizer({i: bytes([i]) for i in range(256)}, [], [ENDOFTEXT])
PAIRS = [
    SFTPair("Q: 2+2?", " A: 4", "f.jsonl:1"),
    SFTPair("Name a colour.", " Blue", "f.jsonl:2"),
    SFTPair("Hi", " there, friend", "f.jsonl:3"),
    SFTPair("Count: 1 2", " 3 4 5", "f.jsonl:4"),
    SFTPair("x", "y", "f.jsonl:5"),
]


def tiny_model(**switches) -> TransformerLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=260, context_length=64, d_model=32, num_layers=2,
                         num_heads=4, **switches)
    return TransformerLM.from_config(config).eval()


# --------------------------------------------------------------------- positions and mask


def test_document_positions_and_mask_by_hand():
    ids = torch.tensor([[3, 3, 3, 8, 8, -1], [5, 5, 5, 5, 5, 5]])
    assert document_positions(ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    mask = document_causal_mask(ids)
    assert mask.shape == (2, 1, 6, 6)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert torch.equal(mask[1, 0], torch.ones(6, 6, dtype=torch.bool).tril())  # one document
    # A run is a document: the same id after another one starts a new document.
    again = torch.tensor([[1, 1, 2, 1]])
    assert document_positions(again).tolist() == [[0, 1, 0, 0]]
    assert document_causal_mask(again)[0, 0, 3].tolist() == [False, False, False, True]


# ------------------------------------------------------------ packed logits = alone logits


def _packed_vs_alone(model: TransformerLM, lengths=(5, 9, 1, 7), dtype=torch.float32):
    torch.manual_seed(1)
    docs = [torch.randint(0, 260, (n,)) for n in lengths]
    row = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    model = model.to(dtype)
    with torch.no_grad():
        packed = model(row, document_ids=doc_ids)[0].float()
        alone = torch.cat([model(d[None])[0].float() for d in docs])
        unmasked = model(row)[0].float()
    return packed, alone, unmasked


@pytest.mark.parametrize("switches", [
    {"attention": "reference"},
    {"attention": "sdpa"},
    {"attention": "flash"},  # our flash kernels take no mask: the fused kernel runs with it
    {"attention": "reference", "num_kv_heads": 2},
    {"attention": "sdpa", "num_kv_heads": 2},
    {"attention": "sdpa", "positional": "nope"},
    {"attention": "sdpa", "norm_position": "post"},
])
def test_packed_logits_equal_each_document_alone(switches):
    packed, alone, unmasked = _packed_vs_alone(tiny_model(**switches))
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # ... and the check can fail: without document_ids later documents see earlier ones.
    assert not torch.allclose(unmasked[5:], alone[5:], atol=1e-3)


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_packed_logits_equal_alone_in_bfloat16(attention):
    # bf16 on CPU: "sdpa" takes the matmul route with an additive mask bias.
    packed, alone, _ = _packed_vs_alone(tiny_model(attention=attention), dtype=torch.bfloat16)
    torch.testing.assert_close(packed, alone, atol=0.05, rtol=0.02)


def test_packed_batch_with_checkpointing_equals_without():
    model = tiny_model(attention="sdpa")
    ids = torch.randint(0, 260, (2, 12))
    doc_ids = torch.tensor([[0] * 4 + [1] * 8, [2] * 12])
    model(ids, document_ids=doc_ids).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.config.checkpoint_activations = True
    model(ids, document_ids=doc_ids).square().mean().backward()
    for a, b in zip(plain, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_document_ids_refused_with_kv_cache_or_wrong_shape():
    model = tiny_model()
    with pytest.raises(ValueError, match="one document id per token"):
        model(torch.zeros(1, 4, dtype=torch.long), document_ids=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="kv_cache"):
        model(torch.zeros(1, 4, dtype=torch.long), kv_cache=object(),
              document_ids=torch.zeros(1, 4))


# ------------------------------------------------------------------------- the dataset


def test_packed_dataset_by_hand():
    pairs = [("ab", "c"), ("d", "ef"), ("ghi", "jk")]  # docs of 4, 4 and 6 tokens with EOT
    data = get_packed_sft_dataset(pairs, TOK, seq_len=6)
    # Positions per doc (tokens - 1): 3, 3, 5; best fit decreasing: [doc 2], [doc 0, doc 1].
    a, b, c, d, e, f, g, h, i, j, k = (ord(x) for x in "abcdefghijk")
    assert data.input_ids.tolist() == [[g, h, i, j, k, EOT], [a, b, c, d, e, f]]
    assert data.labels.tolist() == [[h, i, j, k, EOT, EOT], [b, c, EOT, e, f, EOT]]
    assert data.response_mask.int().tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    assert data.document_ids.tolist() == [[2, 2, 2, 2, 2, -1], [0, 0, 0, 1, 1, 1]]
    assert data.positions.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 2]]
    assert data.lengths.tolist() == [5, 6] and data.fill == 11 / 12
    padded = get_packed_sft_dataset(pairs, TOK, seq_len=6, packing=False)
    assert padded.input_ids.tolist()[1] == [d, e, f, EOT, EOT, EOT]
    assert padded.labels.tolist()[1] == [e, f, EOT, EOT, EOT, EOT]
    assert padded.response_mask.int().tolist()[1] == [1, 1, 1, 0, 0, 0]
    no_eos = get_packed_sft_dataset(pairs, TOK, seq_len=6, packing=False, add_eos=False)
    assert no_eos.labels.tolist()[0] == [b, c, EOT, EOT, EOT, EOT]
    assert no_eos.response_mask.int().tolist()[0] == [0, 1, 0, 0, 0, 0]


def test_dataset_positions_are_what_the_model_derives_and_docs_appear_once():
    data = get_packed_sft_dataset(PAIRS * 3, TOK, seq_len=32)
    assert torch.equal(data.positions, document_positions(data.document_ids))
    ids = data.document_ids[data.document_ids >= 0]
    assert sorted(ids.unique().tolist()) == list(range(15))
    assert len(data) < 15 and data.fill > 0.6


def test_too_long_examples_raise_naming_the_source_or_are_dropped_and_counted():
    long_pairs = [*PAIRS, SFTPair("p" * 30, "r" * 10, "data.jsonl:6")]
    with pytest.raises(InputError, match=r"data.jsonl:6 needs 40 positions .* seq_len = 32"):
        get_packed_sft_dataset(long_pairs, TOK, seq_len=32)
    data = get_packed_sft_dataset(long_pairs, TOK, seq_len=32, drop_long=True)
    assert data.dropped == 1 and 5 not in data.document_ids.tolist()
    special = r"f\.jsonl:2 contains the special token '<\|endoftext\|>'"
    with pytest.raises(InputError, match=special):
        get_packed_sft_dataset([PAIRS[0], SFTPair("a", ENDOFTEXT, "f.jsonl:2")], TOK, 32)


# ------------------------------------------------------------ packed loss = padded loss


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_packed_and_padded_batches_give_the_same_sft_loss_and_gradients(attention):
    model = tiny_model(attention=attention)
    packed = get_packed_sft_dataset(PAIRS, TOK, seq_len=40)
    padded = get_packed_sft_dataset(PAIRS, TOK, seq_len=40, packing=False)
    assert len(packed) < len(padded) == len(PAIRS)
    grads = []
    losses = []
    for data in (packed, padded):
        batch = next(iterate_batches(data, batch_size=len(data), shuffle=False))
        assert ("document_ids" in batch) == data.packed
        model.zero_grad()
        loss, meta = sft_batch_loss(model, batch)
        loss.backward()
        losses.append(loss)
        grads.append([p.grad.clone() for p in model.parameters()])
        assert meta["response_tokens"] == int(data.response_mask.sum())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------- bin packing


def test_best_fit_decreasing_by_hand():
    assert pack_documents([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]
    assert pack_documents([8, 8], 8) == [[0], [1]]
    with pytest.raises(ValueError):
        pack_documents([9], 8)


@given(st.lists(st.integers(1, 16), min_size=1, max_size=60), st.integers(16, 40))
def test_packing_places_every_document_once_within_capacity(sizes, capacity):
    rows = pack_documents(sizes, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in row) <= capacity for row in rows)
    # Best fit never needs more rows than next fit (in the same order) does.
    next_fit, room = 0, 0
    for size in sorted(sizes, reverse=True):
        if size > room:
            next_fit, room = next_fit + 1, capacity
        room -= size
    assert len(rows) <= next_fit
    assert len(rows) >= -(-sum(sizes) // capacity)


# --------------------------------------------------------------------------- batches


def test_iterate_batches_epoch_order_seed_resume_and_trim():
    data = get_packed_sft_dataset(PAIRS * 4, TOK, seq_len=24, packing=False)
    n = len(data)
    batches = list(iterate_batches(data, 3, shuffle=True, seed=7))
    assert len(batches) == num_batches(data, 3) == -(-n // 3)
    seen = torch.cat([b["input_ids"][:, 0] for b in batches])
    assert len(seen) == n
    # Every row once: compare the multiset of rows through their token sums.
    sums = sorted(int(data.input_ids[r, : data.lengths[r]].sum()) for r in range(n))
    got = sorted(int(b["input_ids"][i, : b["lengths"][i]].sum()) for b in batches
                 for i in range(len(b["lengths"])))
    assert got == sums
    again = list(iterate_batches(data, 3, shuffle=True, seed=7))
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again,
                                                                           strict=True))
    other = list(iterate_batches(data, 3, shuffle=True, seed=8))
    assert any(not torch.equal(x["lengths"], y["lengths"]) for x, y in zip(batches, other,
                                                                           strict=True))
    resumed = list(iterate_batches(data, 3, shuffle=True, seed=7, start=2))
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(batches[2:], resumed,
                                                                     strict=True))
    assert len(list(iterate_batches(data, 3, drop_last=True))) == n // 3
    # Trimmed to the batch's longest row.
    assert all(b["input_ids"].shape[1] == int(b["lengths"].max()) for b in batches)
    ordered = next(iterate_batches(data, 2, shuffle=False))
    assert torch.equal(ordered["input_ids"], data.input_ids[:2, : ordered["input_ids"].shape[1]])
