"""GSM8K: lm-eval's prompt format, the generative scoring path against a direct greedy decode."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks import evaluate_task, load_gsm8k, load_task
from tests.eval.test_tasks_mmlu import byte_tokenizer, tiny_model

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eval" / "gsm8k"
TRAIN = [{"question": f"Tom has {i} apples and buys 2. How many?",
          "answer": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"} for i in range(12)]
TEST = [{"question": "Ann has 3 pens and 4 pencils. How many things?",
         "answer": "3 + 4 = 7\n#### 7"},
        {"question": "A box costs $1,200. Two boxes?", "answer": "2 * 1200 = 2400\n#### 2,400"},
        {"question": "Sam is 9. How old in 3 years?", "answer": "9 + 3 = 12\n#### 12"},
        {"question": "Lee had 5 and lost 6. Debt?", "answer": "5 - 6 = -1\n#### -1"}]


def write_gsm8k(root: Path, train=TRAIN, test=TEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_prompt_golds_and_generation_settings(tmp_path):
    task = load_gsm8k(write_gsm8k(tmp_path), shots=2)
    shots = random.Random(1234).sample([(r["question"], r["answer"]) for r in TRAIN], 2)
    prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    assert [e.context for e in task.examples] == [
        f"{prefix}Question: {r['question']}\nAnswer:" for r in TEST]
    assert [e.gold for e in task.examples] == ["7", "2400", "12", "-1"]
    assert task.stop == ("Question:", "\n\n\n") and task.max_tokens == 256
    assert list(task.parsers) == ["strict", "flexible"]
    assert task.examples[0].text == TEST[0]["question"] + "\n" + TEST[0]["answer"]
    assert load_task(f"gsm8k:{tmp_path}").options["shots"] == 8  # the default


@pytest.mark.parametrize("shots", [0, 1])
def test_contexts_equal_lm_evals_gsm8k_task(tmp_path, shots, monkeypatch):
    """lm-eval's own gsm8k.yaml over the same rows (a one-row train split, so its random
    few-shot draw and ours must pick the same example)."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the reference")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = write_gsm8k(tmp_path / "data", train=TRAIN[:1])
    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml")
    config.pop("tag", None)
    files = {s: str(root / f"{s}.jsonl") for s in ("train", "test")}
    config |= {"dataset_path": "json", "dataset_name": None, "num_fewshot": shots,
               "dataset_kwargs": {"data_files": files, "cache_dir": str(tmp_path / "cache")}}
    ref = ConfigurableTask(config=config)
    ref.build_all_requests(rank=0, world_size=1)
    contexts = [i.args[0] for i in sorted(ref.instances, key=lambda i: i.doc_id)]
    ours = load_gsm8k(root, shots=shots)
    assert [e.context for e in ours.examples] == contexts


def _greedy(model, tok, context: str, max_tokens: int, stop: tuple[str, ...]) -> str:
    """Plain greedy decoding: one full forward per new token, text cut at the first stop."""
    ids = tok.encode(context)
    eot = tok.id_of(b"<|endoftext|>")
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            nxt = int(model(torch.tensor([ids + new]))[0, -1].argmax())
            if nxt == eot:
                break
            new.append(nxt)
    text = tok.decode(new)
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


def test_generative_scores_equal_a_direct_greedy_decode(tmp_path):
    """Outputs equal plain greedy decoding; the golds are set so that a parser reading the
    first two characters is right on examples 0 and 2 only: accuracy 1/2 by construction."""
    model, tok = tiny_model(), byte_tokenizer()
    task = load_gsm8k(write_gsm8k(tmp_path), shots=1, max_tokens=6)
    outputs = [_greedy(model, tok, e.context, 6, task.stop) for e in task.examples]
    golds = [out[:2] if i % 2 == 0 else out[:2] + "x" for i, out in enumerate(outputs)]
    task = dataclasses.replace(
        task, parsers={"first2": lambda s: s[:2] or None},
        examples=[dataclasses.replace(e, gold=g) for e, g in zip(task.examples, golds,
                                                                    strict=True)])
    report = evaluate_task(task, model, tok, batch_size=3)
    assert [r.output for r in report.results] == outputs
    assert [r.correct["first2"] for r in report.results] == [True, False, True, False]
    s = report.summary()
    assert s["acc"] == 0.5 and s["baseline"] == 0 and s["centered_acc"] == 0.5
    assert s["truncated"] == 0 and s["unparseable"] == sum(not o for o in outputs)
    assert [r.id for r in report.worst()] == ["test/1", "test/3"]


def test_real_parsers_on_the_tiny_model_count_unparseable(tmp_path):
    model, tok = tiny_model(context_length=128), byte_tokenizer()
    report = evaluate_task(load_gsm8k(write_gsm8k(tmp_path), shots=1, max_tokens=4), model, tok)
    s = report.summary()
    for mode in ("strict", "flexible"):
        parsed = [r.parsed[mode] for r in report.results]
        assert s[f"unparseable_{mode}"] == sum(p is None for p in parsed)
    assert s["unparseable_strict"] == 4  # 4 bytes cannot hold "#### n" after random text
    assert s["truncated"] == 4  # 1 shot + question + 4 new tokens > 128 positions


def test_bad_files_name_the_file_and_line(tmp_path):
    root = write_gsm8k(tmp_path)
    (root / "test.jsonl").write_text(json.dumps(TEST[0]) + "\n\n{not json\n")
    with pytest.raises(InputError, match=r"test\.jsonl:3: not valid JSON"):
        load_gsm8k(root)
    (root / "test.jsonl").write_text('{"question": "q", "answer": "no marks"}\n')
    with pytest.raises(InputError, match=r"test\.jsonl:1: the answer does not end in"):
        load_gsm8k(root)
    (root / "test.jsonl").write_text('["q", "a"]\n')
    with pytest.raises(InputError, match=r"test\.jsonl:1: expected"):
        load_gsm8k(root)
    (root / "test.jsonl").write_text("\n")
    with pytest.raises(InputError, match="holds no questions"):
        load_gsm8k(root)
    with pytest.raises(InvalidArgument, match="13 shots asked"):
        load_gsm8k(write_gsm8k(tmp_path / "b"), shots=13)


def test_the_shared_fixture_loads():
    if not (FIXTURE / "test.jsonl").is_file():
        pytest.skip(f"the GSM8K fixture is not at {FIXTURE}")
    task = load_task(f"gsm8k:{FIXTURE}")
    assert len(task.examples) == 1319 and task.examples[0].gold == "18"
    assert task.examples[0].context.count("Question:") == 9  # 8 shots + the question
