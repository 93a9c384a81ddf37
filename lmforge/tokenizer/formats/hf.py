"""HuggingFace ``tokenizer.json``: written so it encodes exactly like lmforge, and read back.

**Writing** (``export_hf_tokenizer_json``): model BPE with the same vocab and merges;
pre-tokenizer ``Split(GPT2_PATTERN, "Isolated")`` then ``ByteLevel(use_regex=False)`` — the
pattern is written out verbatim, so the split is ours by construction rather than by
HuggingFace's built-in copy of it; specials as ``added_tokens`` (HF matches them
leftmost-longest, like ``pretokenize.special_token_regex``). No dependency on ``tokenizers``.

**Reading** (``parse_hf_tokenizer_json``): a ``tokenizer.json`` whose model is BPE over GPT-2's
byte map, with our split or GPT-2's built-in ``ByteLevel`` one and no normalizer, encodes exactly
like an lmforge tokenizer; anything else (Llama 3's other regex, SentencePiece, ...) does not and
is refused (None), so ``lmforge import hf`` leaves the tokenizer out rather than encode wrongly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.fsutil import atomic_write_text
from lmforge.tokenizer.formats.gpt2 import (
    TokenizerData,
    TokenizerParts,
    encode_token,
    encoded_vocab,
    special_ids,
    unicode_to_bytes,
)
from lmforge.tokenizer.pretokenize import GPT2_PATTERN

_OUR_SPLIT = {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated",
              "invert": False}
_OUR_BYTE_LEVEL = {"type": "ByteLevel", "use_regex": False}


def export_hf_tokenizer_json(tokenizer: TokenizerData, path: str | os.PathLike) -> Path:
    """Write a HuggingFace ``tokenizer.json`` that encodes exactly like ``tokenizer.encode``.

    >>> from tokenizers import Tokenizer as HF                   # doctest: +SKIP
    >>> HF.from_file(str(export_hf_tokenizer_json(tok, "tokenizer.json"))).encode(s).ids \\
    ...     == tok.encode(s)                                     # doctest: +SKIP
    True

    Specials are added tokens with their own ids (HF only keeps an added token's id when the
    model vocab holds it, so they are in the model vocab too). HF's ByteLevel decoder re-maps a
    special whose every character is in GPT-2's byte map (e.g. one containing ``é``); ASCII
    specials such as ``<|endoftext|>`` decode correctly.
    """
    specials = special_ids(tokenizer.vocab, tokenizer.special_tokens)
    added = dict.fromkeys(["single_word", "lstrip", "rstrip", "normalized"], False)
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    model = {
        "type": "BPE",
        **dict.fromkeys(
            ["dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"]
        ),
        **dict.fromkeys(["fuse_unk", "byte_fallback", "ignore_merges"], False),
        "vocab": encoded_vocab(tokenizer.vocab, specials),
        "merges": [f"{encode_token(a)} {encode_token(b)}" for a, b in tokenizer.merges],
    }
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, **added, "special": True}
            for s, i in sorted(specials.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [_OUR_SPLIT, {"type": "ByteLevel", **byte_level}],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": model,
    }
    return atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1))


def parse_hf_tokenizer_json(doc: dict[str, Any]) -> TokenizerParts | None:
    """The vocab, merges and specials of a parsed ``tokenizer.json`` that encodes exactly like an
    lmforge tokenizer (see the module docstring), else None (also when entries are malformed).

    ``Tokenizer(*parts)`` may still refuse the parts (TokenizerInputError), e.g. for a merge
    whose result is not in the vocabulary.
    """
    model, pre = doc.get("model") or {}, doc.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    same_split = len(steps) == 2 and steps[0] == _OUR_SPLIT and all(
        steps[1].get(k) == v for k, v in _OUR_BYTE_LEVEL.items()
    ) and not steps[1].get("add_prefix_space")
    gpt2_split = len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get(
        "use_regex", True) and not steps[0].get("add_prefix_space")
    if model.get("type") != "BPE" or doc.get("normalizer") or not (same_split or gpt2_split):
        return None
    to_byte = unicode_to_bytes()
    try:
        specials = {t["content"]: t["id"] for t in doc.get("added_tokens", []) if t.get("special")}
        vocab = {i: s.encode() if s in specials else bytes(to_byte[c] for c in s)
                 for s, i in model["vocab"].items()}
        vocab.update({i: s.encode() for s, i in specials.items()})
        pairs = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        merges = [(bytes(to_byte[c] for c in a), bytes(to_byte[c] for c in b)) for a, b in pairs]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return TokenizerParts(vocab, merges, list(specials))
