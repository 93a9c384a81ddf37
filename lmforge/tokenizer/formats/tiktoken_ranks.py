"""tiktoken's ``.tiktoken`` rank file (``export_tiktoken``): ``base64(token bytes) rank`` per line.

tiktoken has no merge list: it merges the adjacent pair whose *concatenation* has the lowest
rank. That is merge-list BPE when the ranks follow merge order (every multi-byte token is made by
exactly one merge, after its two parts, and merge results are ranked in merge order) — true for
vocabularies trained by lmforge and for GPT-2; ``check_tiktoken_compatible`` verifies it. Load
it with::

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    enc = tiktoken.Encoding("my-bpe", pat_str=GPT2_PATTERN,
                            mergeable_ranks=load_tiktoken_bpe("my.tiktoken"),
                            special_tokens={"<|endoftext|>": 0})

or call ``to_tiktoken_encoding(tokenizer)``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.fsutil import atomic_write_text
from lmforge.tokenizer.formats.gpt2 import TokenizerData, special_ids
from lmforge.tokenizer.pretokenize import GPT2_PATTERN, TokenizerInputError

if TYPE_CHECKING:
    import tiktoken


def check_tiktoken_compatible(tokenizer: TokenizerData) -> dict[bytes, int]:
    """Return tiktoken's ``mergeable_ranks`` (non-special token bytes → id), or raise.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; that is our
    merge-list BPE only if ids follow merge order. Checked: all 256 single bytes present; every
    other non-special token made by exactly one merge; each merge result's id above its parts'
    ids and the previous merge result's id. Not checked (it would cost a BPE run per token): that
    no token can also be formed from two tokens other than its own merge's parts, where tiktoken
    (and its whole-piece shortcut) could differ. BPE training records merges from the same
    left-to-right segmentation the encoder uses, and the tests pin GPT-2 and trained vocabularies.
    """
    specials = set(special_ids(tokenizer.vocab, tokenizer.special_tokens).values())
    ranks = {t: i for i, t in tokenizer.vocab.items() if i not in specials}
    problem = _rank_order_problem(ranks, tokenizer.merges)
    if len(ranks) != len(tokenizer.vocab) - len(specials):
        problem = "two ids share the same token bytes"
    if problem:
        raise TokenizerInputError(
            f"cannot export to tiktoken: {problem}. tiktoken would encode differently from this "
            "tokenizer (its ids must follow merge order, as train_bpe's and GPT-2's do)."
        )
    return ranks


def _rank_order_problem(
    ranks: dict[bytes, int], merges: Sequence[tuple[bytes, bytes]]
) -> str | None:
    """Why ``ranks`` do not follow ``merges`` (see ``check_tiktoken_compatible``), or None.

    >>> _rank_order_problem({bytes([b]): b for b in range(256)} | {b"ab": 256}, [(b"a", b"b")])
    >>> _rank_order_problem({bytes([b]): b for b in range(256)} | {b"ab": 5}, [(b"a", b"b")])
    "merge (b'a', b'b') -> id 5 is out of order"
    """
    if missing := [b for b in range(256) if bytes([b]) not in ranks]:
        return f"single byte {bytes([missing[0]])!r} has no token"
    if len(ranks) != 256 + len({a + b for a, b in merges}) or len(merges) != len(ranks) - 256:
        return "the multi-byte tokens are not exactly the merge results, one per merge"
    last = -1
    for a, b in merges:
        rank = ranks.get(a + b, -1)
        if a not in ranks or b not in ranks or not max(ranks[a], ranks[b], last) < rank:
            return f"merge {(a, b)!r} -> id {rank} is out of order"
        last = rank
    return None


def export_tiktoken(tokenizer: TokenizerData, path: str | os.PathLike) -> Path:
    """Write the ``.tiktoken`` rank file (``base64(token bytes) id`` per line, by id).

    Special tokens are not in the file; pass them to ``tiktoken.Encoding(special_tokens=...)``
    (see the module docstring, or use ``to_tiktoken_encoding``).
    """
    ranks = sorted(check_tiktoken_compatible(tokenizer).items(), key=lambda kv: kv[1])
    text = "".join(f"{base64.b64encode(t).decode('ascii')} {i}\n" for t, i in ranks)
    return atomic_write_text(path, text)


def to_tiktoken_encoding(tokenizer: TokenizerData, name: str = "lmforge-bpe") -> tiktoken.Encoding:
    """A ``tiktoken.Encoding`` with the same ids as ``tokenizer`` (needs tiktoken installed).

    Encode with ``allowed_special="all"`` to get special ids for special-token text.
    """
    import tiktoken

    return tiktoken.Encoding(
        name,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=check_tiktoken_compatible(tokenizer),
        special_tokens=special_ids(tokenizer.vocab, tokenizer.special_tokens),
    )
