"""The shipped next-sentence task `data/small_en_mc.jsonl` (the README's `lmforge eval mc` input).

It must be what `data/make_small_en_mc.py` generates, use only the demo's validation chapters
(never text a demo model trained on), and each question must have its real next sentence as the
gold choice.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lmforge.tokenizer.split import split_documents

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "small_en_mc.jsonl"


def _script():
    spec = importlib.util.spec_from_file_location("make_small_en_mc",
                                                  ROOT / "data" / "make_small_en_mc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_task_is_what_the_script_generates() -> None:
    script = _script()
    corpus = (ROOT / "data" / "small_en.txt").read_text(encoding="utf-8")
    assert SHIPPED.read_text(encoding="utf-8") == script.render(script.make_items(corpus, 200))


def test_questions_come_from_validation_chapters_with_the_true_next_sentence() -> None:
    corpus = (ROOT / "data" / "small_en.txt").read_text(encoding="utf-8")
    train, val = split_documents(corpus)
    flat_train = [" ".join(c.split()) for c in train]
    flat_val = [" ".join(c.split()) for c in val]
    items = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
    assert len(items) == 200
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        passage = item["context"] + " " + item["choices"][item["gold"]]
        assert any(passage in c for c in flat_val)
        assert not any(item["context"] in c for c in flat_train)
        for k, wrong in enumerate(item["choices"]):
            if k != item["gold"]:
                assert item["context"] + " " + wrong not in " ".join(flat_val + flat_train)
    golds = [item["gold"] for item in items]
    assert all(golds.count(k) >= 30 for k in range(4))  # the gold position is not predictable
