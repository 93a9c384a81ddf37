"""Generate ``data/small_en_mc.jsonl``: a next-sentence multiple-choice task on held-out prose.

    python data/make_small_en_mc.py                        # rewrites data/small_en_mc.jsonl
    python data/make_small_en_mc.py --out /tmp/mc.jsonl --items 50

Each line is ``{"context", "choices", "gold"}`` (the format of ``lmforge eval mc``): the context
is a stretch of a chapter (whole sentences, about 400 characters), the choices are the sentence
that really comes next and three sentences of similar length from *other* chapters, in a seeded
order. Only the demo's validation chapters are used (`lmforge.tokenizer.split.split_documents`
with the demo's defaults), so a model trained by ``lmforge demo`` has never seen them: it can
only beat chance (25%) by having learned how English prose continues — the style, names and
topic of the passage (HellaSwag and the story-cloze tasks are larger versions of the same idea).

Deterministic (`SEED`): re-running the script rewrites the same bytes, which
``tests/eval/test_small_en_mc.py`` checks.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from lmforge.fsutil import atomic_write_text
from lmforge.tokenizer.split import split_documents

HERE = Path(__file__).resolve().parent
SEED = 20261202
CONTEXT_CHARS = 400  # a context is whole sentences adding up to at least this many characters
CHOICES = 4
# A sentence ends at . ! ? (possibly followed by a closing quote) before whitespace and a capital
# letter or an opening quote; dialogue in these books opens with ` or ".
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?]['\"]))\s+(?=[`\"'A-Z])")


def sentences(chapter: str) -> list[str]:
    """The chapter's sentences, whitespace collapsed, in order.

    >>> sentences("Alice ran.  She fell!\\n\\n`Oh dear,' said the Rabbit.")
    ['Alice ran.', 'She fell!', "`Oh dear,' said the Rabbit."]
    """
    flat = " ".join(chapter.split())
    parts = [m.strip() for m in _SENTENCE_END.split(flat)]
    return [p for p in parts if p]


def make_items(corpus: str, n_items: int, seed: int = SEED) -> list[dict]:
    """`n_items` next-sentence questions from the validation chapters of `corpus`."""
    _, val_chapters = split_documents(corpus)
    chapters = [sentences(c) for c in val_chapters]
    rng = random.Random(seed)
    candidates = []  # (chapter, index of the sentence to predict)
    for c, sents in enumerate(chapters):
        for i in range(1, len(sents)):
            if 20 <= len(sents[i]) <= 300:
                candidates.append((c, i))
    rng.shuffle(candidates)
    items = []
    for c, i in candidates:
        if len(items) == n_items:
            break
        context = _context(chapters[c], i)
        if context is None:
            continue
        gold = chapters[c][i]
        wrong = _distractors(chapters, c, len(gold), rng)
        choices = [gold, *wrong]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "gold": choices.index(gold)})
    if len(items) < n_items:
        raise ValueError(f"only {len(items)} questions could be made, {n_items} were asked for")
    return items


def _context(sents: list[str], i: int) -> str | None:
    """Whole sentences before sentence i adding up to CONTEXT_CHARS, or None if too few."""
    picked: list[str] = []
    for s in reversed(sents[:i]):
        picked.insert(0, s)
        if sum(len(p) + 1 for p in picked) >= CONTEXT_CHARS:
            return " ".join(picked)
    return None


def _distractors(chapters: list[list[str]], c: int, length: int, rng: random.Random) -> list[str]:
    """CHOICES - 1 sentences of other chapters, each within ±30% of `length` characters."""
    pool = [s for k, sents in enumerate(chapters) if k != c for s in sents
            if max(20, 0.7 * length) <= len(s) <= 1.3 * length]
    return rng.sample(pool, CHOICES - 1)


def render(items: list[dict]) -> str:
    """The JSONL text of `items` (one object per line, UTF-8, keys in a fixed order)."""
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "small_en_mc.jsonl")
    parser.add_argument("--items", type=int, default=200)
    args = parser.parse_args()
    corpus = (HERE / "small_en.txt").read_text(encoding="utf-8")
    atomic_write_text(args.out, render(make_items(corpus, args.items)))
    print(f"wrote {args.items} questions to {args.out}")


if __name__ == "__main__":
    main()
