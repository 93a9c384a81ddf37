"""MMLU: prompts equal lm-evaluation-harness's `mmlu` task, scores equal direct forwards."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest
import torch

from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks import evaluate_task, load_mmlu, load_task
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eval" / "mmlu"
DEV = {
    "high_school_geography": [
        [" What is the capital of France? ", "Paris", "Rome", "Oslo", "Bern", "A"],
        ['Which is "wet", by definition?', "sand", "water", "dust, dry", "ash", "B"],
    ],
    "astronomy": [
        ["Closest star?", "Sirius", "Vega", "The Sun", "Polaris", "C"],
        ["Planets: how\nmany?", "7", "8", "9", "10", "B"],
    ],
}
TEST = {
    "high_school_geography": [
        ["Longest river?", "Nile", "Thames", "Seine", "Po", "A"],
        ["Largest ocean?", "Atlantic", "Indian", "Arctic", "Pacific", "D"],
    ],
    "astronomy": [
        ["Red planet?", "Venus", "Mars", "Earth", "Mercury", "B"],
        ["Ringed planet?", "Saturn", "Mars", "Venus", "Mercury", "A"],
        ["Hot planet?", "Venus", "Neptune", "Uranus", "Pluto", "A"],
        ["Moon of Earth?", "Luna", "Io", "Europa", "Titan", "A"],
        ["Big planet?", "Jupiter", "Mars", "Venus", "Mercury", "A"],
    ],
}


def write_mmlu(root: Path, dev=DEV, test=TEST) -> Path:
    for split, table in (("dev", dev), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject, rows in table.items():
            with open(root / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)
    return root


def tiny_model(context_length: int = 512, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=260, context_length=context_length, d_model=32, num_layers=2,
                         num_heads=4)
    model = TransformerLM.from_config(config).eval()
    with torch.no_grad():  # larger logits: the choices get clearly different scores
        model.lm_head.weight.mul_(8)
    return model


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def direct_logprob(model, tok, context: str, continuation: str) -> tuple[float, int]:
    """Σ log p(continuation | context) from one plain forward of context + continuation."""
    ctx, whole = tok.encode(context), tok.encode(context + continuation)
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).double(), dim=-1)[0]
    cont = whole[len(ctx):]
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)), len(cont)


# ------------------------------------------------------------------------------------ prompts


def test_mcf_prompt_equals_the_hand_written_lm_eval_format(tmp_path):
    task = load_mmlu(write_mmlu(tmp_path), shots=2, subjects=["high_school_geography"])
    first = task.examples[0]
    assert first.context == (
        "The following are multiple choice questions (with answers) about high school "
        "geography.\n\n"
        "What is the capital of France?\nA. Paris\nB. Rome\nC. Oslo\nD. Bern\nAnswer: A\n\n"
        'Which is "wet", by definition?\nA. sand\nB. water\nC. dust, dry\nD. ash\nAnswer: B\n\n'
        "Longest river?\nA. Nile\nB. Thames\nC. Seine\nD. Po\nAnswer:")
    assert first.continuations == (" A", " B", " C", " D") and first.gold == 0
    assert first.id == "high_school_geography/test/0" and first.subject == "high_school_geography"
    assert first.text == "Longest river?\nNile"


def _lm_eval_mmlu_requests(tmp_path: Path, subject: str, shots: int) -> list[tuple[str, str]]:
    """(context, continuation) of every request lm-eval's own `mmlu_<subject>` task builds, its
    dataset swapped for the same rows as local JSON (cais/mmlu's columns)."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the reference")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    files = {}
    for split, table in (("dev", DEV), ("test", TEST)):
        files[split] = str(tmp_path / f"lm_eval_{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(
            {"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(x)})
            + "\n" for q, a, b, c, d, x in table[subject]))
    yaml = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / f"mmlu_{subject}.yaml"
    config = load_yaml(yaml)
    config.pop("tag", None)
    config |= {"dataset_path": "json", "dataset_name": None, "num_fewshot": shots,
               "dataset_kwargs": {"data_files": files, "cache_dir": str(tmp_path / "cache")}}
    task = ConfigurableTask(config=config)
    task.build_all_requests(rank=0, world_size=1)
    return [tuple(i.args) for i in sorted(task.instances, key=lambda i: (i.doc_id, i.idx))]


@pytest.mark.parametrize("shots", [0, 2])
def test_mcf_requests_equal_what_lm_eval_builds_for_its_mmlu_task(tmp_path, shots,
                                                                 monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    subject = "astronomy"
    ref = _lm_eval_mmlu_requests(tmp_path, subject, shots)
    task = load_mmlu(write_mmlu(tmp_path / "mmlu"), shots=shots, subjects=[subject])
    ours = [(e.context, c) for e in task.examples for c in e.continuations]
    assert ours == ref
    assert len(ours) == 4 * len(TEST[subject])


def test_cf_and_gen_prompts(tmp_path):
    root = write_mmlu(tmp_path)
    cf = load_mmlu(root, form="cf", shots=1, subjects=["astronomy"]).examples[0]
    assert cf.context == ("The following are multiple choice questions (with answers) about "
                          "astronomy.\n\nQuestion: Closest star?\nAnswer: The Sun\n\n"
                          "Question: Red planet?\nAnswer:")
    assert cf.continuations == (" Venus", " Mars", " Earth", " Mercury") and cf.gold == 1
    gen = load_mmlu(root, form="gen", shots=1, subjects=["astronomy"])
    mcf = load_mmlu(root, form="mcf", shots=1, subjects=["astronomy"])
    assert gen.examples[0].context == mcf.examples[0].context
    assert gen.examples[0].gold == "B" and gen.stop == ("\n\n",) and gen.max_tokens == 32


# ------------------------------------------------------------------------------------ scoring


def _direct_scores(model, tok, e, normalization: str) -> list[float]:
    scored = [direct_logprob(model, tok, e.context, c) for c in e.continuations]
    if normalization == "token":
        return [lp / n for lp, n in scored]
    if normalization == "char":  # the option's length, without the joining space
        return [lp / (len(c) - 1) for (lp, _), c in zip(scored, e.continuations, strict=True)]
    return [lp for lp, _ in scored]


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


@pytest.mark.parametrize("form", ["mcf", "cf"])
def test_predictions_and_accuracy_equal_direct_forwards(tmp_path, form):
    """The gold answers are rewritten so that the direct forwards' prediction is right on the
    even rows of each subject and wrong on the odd ones: geography 1/2, astronomy 3/5, so
    micro = 4/7 and macro = (0.5 + 0.6) / 2 whatever the random model prefers."""
    model, tok = tiny_model(), byte_tokenizer()
    cached = functools.lru_cache(maxsize=None)(lambda e, n: _direct_scores(model, tok, e, n))
    root = write_mmlu(tmp_path)
    headline = "char" if form == "cf" else "none"
    first = load_mmlu(root, form=form, shots=1).examples
    preds = {e.id: _argmax(cached(e, headline)) for e in first}
    test = {subject: [[*row[:5], "ABCD"[(preds[f"{subject}/test/{i}"] + i % 2) % 4]]
                      for i, row in enumerate(rows)] for subject, rows in TEST.items()}
    task = load_mmlu(write_mmlu(root, test=test), form=form, shots=1)
    report = evaluate_task(task, model, tok, batch_size=3)
    norms = ("none", "token", "char") if form == "cf" else ("none",)
    for e, r in zip(task.examples, report.results, strict=True):
        assert r.correct[headline] == (int(e.id.rsplit("/", 1)[1]) % 2 == 0)
        for n in norms:
            scores = cached(e, n)
            assert r.correct[n] == (_argmax(scores) == e.gold)
            if n == headline:
                assert r.prediction == _argmax(scores)
                wrong = max(x for i, x in enumerate(scores) if i != e.gold)
                assert r.margin == pytest.approx(scores[e.gold] - wrong, abs=1e-4)
        assert r.logprobs == pytest.approx(cached(e, "none"), abs=1e-4)
    s = report.summary()
    assert report.metric == headline
    assert s["acc_micro"] == pytest.approx(4 / 7)
    assert s["acc_micro_stderr"] == pytest.approx((4 / 7 * 3 / 7 * 7 / 6) ** 0.5 / 7 ** 0.5)
    assert s["acc"] == s["acc_macro"] == pytest.approx(0.55)
    se_geo, se_astro = 0.5, (0.6 * 0.4 * 5 / 4) ** 0.5 / 5 ** 0.5
    assert s["acc_stderr"] == pytest.approx((se_geo ** 2 + se_astro ** 2) ** 0.5 / 2)
    assert s["baseline"] == 0.25 and s["truncated"] == 0
    assert s["centered_acc"] == pytest.approx((0.55 - 0.25) / 0.75)
    assert report.subjects()["astronomy"].acc == pytest.approx(0.6)


def test_contexts_longer_than_the_window_are_counted_as_truncated(tmp_path):
    task = load_mmlu(write_mmlu(tmp_path), shots=2)
    short = evaluate_task(task, tiny_model(context_length=64), byte_tokenizer())
    assert short.summary()["truncated"] == len(task.examples)
    assert all(r.truncated for r in short.results)


def test_limit_draws_a_reproducible_subset_per_seed(tmp_path):
    model, tok = tiny_model(), byte_tokenizer()
    task = load_mmlu(write_mmlu(tmp_path), shots=0)
    ids = {seed: [r.id for r in evaluate_task(task, model, tok, limit=3, seed=seed).results]
           for seed in (0, 0, 1, 2)}
    again = [r.id for r in evaluate_task(task, model, tok, limit=3, seed=0).results]
    assert again == ids[0] and len(ids[0]) == 3
    assert len({tuple(v) for v in ids.values()}) > 1  # other seeds, other subsets
    order = [e.id for e in task.examples]
    assert ids[0] == sorted(ids[0], key=order.index)  # kept in task order
    with pytest.raises(InvalidArgument, match="more than the 7 examples"):
        evaluate_task(task, model, tok, limit=8)


# ---------------------------------------------------------------------------------- bad input


def test_a_malformed_row_names_the_file_and_line(tmp_path):
    root = write_mmlu(tmp_path)
    bad = root / "test" / "astronomy_test.csv"
    bad.write_text('"A question\nover two lines",a,b,c,d,A\nshort,row,B\n')
    with pytest.raises(InputError, match=r"astronomy_test\.csv:3: expected 6 fields"):
        load_mmlu(root, shots=2)
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(InputError, match=r"astronomy_test\.csv:1: the answer must be one of"):
        load_mmlu(root, shots=2)


def test_unknown_subject_lists_the_valid_ones(tmp_path):
    with pytest.raises(InvalidArgument, match=r"unknown MMLU subject.*valid: astronomy, "
                                              r"high_school_geography"):
        load_mmlu(write_mmlu(tmp_path), shots=2, subjects=["astrology"])


def test_empty_and_misnamed_inputs_are_refused(tmp_path):
    root = write_mmlu(tmp_path)
    for f in (root / "test").iterdir():
        f.write_text("\n")
    with pytest.raises(InputError, match="holds no questions"):
        load_mmlu(root, shots=0)
    with pytest.raises(InvalidArgument, match=r"3 shots asked but .* has 2 rows"):
        load_mmlu(write_mmlu(tmp_path / "b"), shots=3)
    with pytest.raises(InvalidArgument, match="form must be one of"):
        load_mmlu(root, form="xyz", shots=0)
    with pytest.raises(InvalidArgument, match="KIND:PATH"):
        load_task(f"hellaswag:{root}")


def test_the_shared_fixture_loads_all_57_subjects_with_lm_evals_prompt():
    if not (FIXTURE / "test").is_dir():
        pytest.skip(f"the MMLU fixture is not at {FIXTURE}")
    task = load_task(f"mmlu:{FIXTURE}")
    assert len({e.subject for e in task.examples}) == 57
    assert len(task.examples) == 14042  # the MMLU test split
    first = task.examples[0]
    assert first.context.startswith("The following are multiple choice questions (with "
                                    "answers) about abstract algebra.\n\nFind all c in Z_3")
    assert first.context.count("\nAnswer:") == 6  # 5 shots + the question
