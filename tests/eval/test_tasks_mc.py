"""Generic multiple choice: lm-eval's requests and acc / acc_norm from the same log-likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.errors import InputError, InvalidArgument, PathNotFound
from lmforge.eval.scoring import loglikelihood
from lmforge.eval.tasks import evaluate_task, load_mc, load_task
from tests.eval.test_tasks_mmlu import byte_tokenizer, tiny_model

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "small_en_mc.jsonl"
DOCS = [
    {"context": "The cat sat on the", "choices": ["mat.", "moon and the stars.", "hat"],
     "gold": 0},
    {"context": "Water boils at", "choices": ["100 degrees", "a low heat", "noon"], "gold": 0},
    {"context": "She opened the", "choices": ["door", "window wide", "box", "letter"], "gold": 3},
    {"context": "Two plus two is", "choices": ["four", "five"], "gold": 1},
    {"context": "Birds can", "choices": ["fly", "swim very well", "sing"], "gold": 2},
]


def write_mc(path: Path, docs=DOCS) -> Path:
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n\n")  # a trailing blank line
    return path


def test_examples_and_continuations(tmp_path):
    task = load_task(f"mc:{write_mc(tmp_path / 'toy.jsonl')}")
    assert task.name == "toy" and len(task.examples) == 5 and task.normalization == "char"
    e = task.examples[0]
    assert e.continuations == (" mat.", " moon and the stars.", " hat") and e.gold == 0
    assert e.text == "The cat sat on the mat."
    spaced = load_mc(write_mc(tmp_path / "s.jsonl", [{"context": "x", "choices": ["\ny", " z"],
                                                      "gold": 1}]))
    assert spaced.examples[0].continuations == ("\ny", " z")


def test_scores_equal_lm_evals_acc_and_acc_norm(tmp_path, monkeypatch):
    """lm-eval's multiple_choice task over the same file builds the same requests, and its
    process_results on our log-likelihoods gives our none (acc) and char (acc_norm) scores."""
    pytest.importorskip("lm_eval", reason="lm-eval is the reference")
    from lm_eval.api.task import ConfigurableTask

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = write_mc(tmp_path / "toy.jsonl")
    ref = ConfigurableTask(config={
        "task": "toy", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(path)},
                           "cache_dir": str(tmp_path / "cache")},
        "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]})
    ref.build_all_requests(rank=0, world_size=1)
    instances = sorted(ref.instances, key=lambda i: (i.doc_id, i.idx))
    task = load_mc(path)
    assert [tuple(i.args) for i in instances] == [
        (e.context, c) for e in task.examples for c in e.continuations]
    model, tok = tiny_model(), byte_tokenizer()
    report = evaluate_task(task, model, tok)
    lls = loglikelihood(model, tok, [tuple(i.args) for i in instances])
    docs = list(ref.test_docs())
    at = 0
    for doc, e, r in zip(docs, task.examples, report.results, strict=True):
        scored = [(x.logprob, x.is_greedy) for x in lls[at:at + len(e.choices)]]
        at += len(e.choices)
        expected = ref.process_results(doc, scored)
        assert r.correct["none"] == bool(expected["acc"])
        assert r.correct["char"] == bool(expected["acc_norm"])
    s = report.summary()
    assert s["acc_none"] == pytest.approx(sum(r.correct["none"] for r in report.results) / 5)
    assert s["baseline"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 4 + 1 / 2 + 1 / 3) / 5)
    assert len({r.correct["none"] for r in report.results}) == 2  # some right, some wrong


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"toy\.jsonl:2: not valid JSON"),
    ('{"context": "c", "choices": ["a", "b"], "gold": 2}', r"toy\.jsonl:2: gold must be an "
                                                            r"index in 0\.\.1"),
    ('{"context": "c", "choices": ["a", "b"], "gold": true}', r"toy\.jsonl:2: gold must be"),
    ('{"context": "c", "choices": ["a"], "gold": 0}', r"toy\.jsonl:2: choices must be at least 2"),
    ('{"context": "c", "choices": ["a", ""], "gold": 0}', r"toy\.jsonl:2: choices must be"),
    ('{"context": 3, "choices": ["a", "b"], "gold": 0}', r"toy\.jsonl:2: expected"),
])
def test_a_bad_line_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps(DOCS[0]) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        load_mc(path)


def test_empty_missing_and_misused_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(InputError, match="holds no examples"):
        load_mc(tmp_path / "empty.jsonl")
    with pytest.raises(PathNotFound):
        load_task(f"mc:{tmp_path / 'none.jsonl'}")
    with pytest.raises(InvalidArgument, match="normalization"):
        load_mc(write_mc(tmp_path / "toy.jsonl"), normalization="byte")
    (tmp_path / "bad.jsonl").write_bytes(b'{"context": "\xff"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1: not UTF-8"):
        load_mc(tmp_path / "bad.jsonl")


def test_the_shipped_task_loads():
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is not there")
    task = load_mc(SHIPPED)
    assert len(task.examples) > 10 and all(len(e.choices) == 4 for e in task.examples)


def test_load_task_passes_forms_and_options_to_each_loader(tmp_path):
    from tests.eval.test_tasks_gsm8k import write_gsm8k
    from tests.eval.test_tasks_mmlu import write_mmlu

    path = write_mc(tmp_path / "toy.jsonl")
    assert load_task(f"mc:{path}", form="cf", normalization="token").normalization == "token"
    with pytest.raises(InvalidArgument, match="zero-shot"):
        load_task(f"mc:{path}", shots=2)
    gsm = write_gsm8k(tmp_path / "gsm8k")
    assert load_task(f"gsm8k:{gsm}", shots=0, max_tokens=5).max_tokens == 5
    with pytest.raises(InvalidArgument, match="only the form 'gen'"):
        load_task(f"gsm8k:{gsm}", form="cf")
    mmlu = load_task(f"mmlu:{write_mmlu(tmp_path / 'mmlu')}", shots=1, form="cf",
                     subjects=["astronomy"])
    assert mmlu.form == "cf" and {e.subject for e in mmlu.examples} == {"astronomy"}
