"""The lm-eval bridge scores like lm-eval's own `hf` backend on the same model, exported.

A tiny random model with a trained tokenizer is saved as a run and exported with `export_hf`;
each local task (`lmforge.eval.lm_eval_tasks`, no download) then runs through
`lm_eval.simple_evaluate` twice, with model="lmforge" (the bridge) and model="hf" (HFLM on the
export, float32, CPU): every request's log-likelihood must agree to 1e-4, the greedy flags
and generated strings exactly, and so must the accuracies. The context window (256 tokens) is
short on purpose: MMLU's 5-shot prompts are cut from the left, rolling texts take several
windows, and the multiple-choice contexts fit.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Before `datasets` is imported (by lm-eval's tasks): every task here is local files.
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional `eval` extra")
pytest.importorskip("transformers", reason="lm-eval's hf backend (the reference) needs it")
pytest.importorskip("accelerate", reason="lm-eval's hf backend (the reference) needs it")

import yaml  # noqa: E402  (lm-eval's dependency)
from lm_eval.tasks import TaskManager  # noqa: E402

from lmforge.config import TrainConfig, save_config  # noqa: E402
from lmforge.errors import InputError, InvalidArgument, PathNotFound  # noqa: E402
from lmforge.eval.lm_eval_bridge import LmforgeLM, generation_request  # noqa: E402
from lmforge.eval.lm_eval_tasks import (  # noqa: E402
    MMLU_TEMPLATE,
    write_gsm8k_task,
    write_jsonl_mc_task,
    write_mmlu_task,
    write_rolling_task,
)
from lmforge.eval.scoring import GenerationRequest  # noqa: E402
from lmforge.eval.tasks import load_task, select_examples  # noqa: E402
from lmforge.infer.hf_io import export_hf  # noqa: E402
from lmforge.model import ModelConfig, TransformerLM  # noqa: E402
from lmforge.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from lmforge.train.checkpoint import save_run_checkpoint  # noqa: E402
from lmforge.train.optim import AdamW  # noqa: E402
from tests.conftest import REPO, shared_path  # noqa: E402

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
TEXT = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8")[:60_000]
PARAGRAPHS = [" ".join(p.split()) for p in TEXT.split("\n\n") if 150 < len(p) < 600]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A random 2-layer model (context 256) with a 400-token BPE trained on Alice, as a run."""
    tmp = tmp_path_factory.mktemp("bridge")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT[:8000], encoding="utf-8")
    tok = train_tokenizer(corpus, 400, num_workers=1, progress=False)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, context_length=256, d_model=32,
                         num_layers=2, num_heads=4)
    run = tmp / "run"
    run.mkdir()
    save_config(TrainConfig(model=config), run / "config.toml")
    model = TransformerLM.from_config(config)
    save_run_checkpoint(run, 1, model, AdamW(model.parameters()), {})
    tok.save(run / "tokenizer")
    return run


@pytest.fixture(scope="module")
def hf_dir(run) -> Path:
    return export_hf(run, run.parent / "hf")


def evaluate(backend: str, run: Path, hf_dir: Path, task, **kwargs) -> dict:
    """`simple_evaluate` of `task` (a LocalTask) with the bridge or HFLM, samples logged."""
    model_args = ({"run": str(run), "device": "cpu"} if backend == "lmforge" else
                  {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu"})
    return lm_eval.simple_evaluate(
        model=backend, model_args=model_args, tasks=[task.name], batch_size=4,
        task_manager=TaskManager(include_path=str(task.include_path), include_defaults=False),
        log_samples=True, **kwargs)


def both(run, hf_dir, task, **kwargs) -> tuple[dict, dict]:
    return (evaluate("lmforge", run, hf_dir, task, **kwargs),
            evaluate("hf", run, hf_dir, task, **kwargs))


def responses(result: dict) -> dict[tuple[str, int], list]:
    """(task, doc_id) -> the model's raw answers to that document's requests."""
    return {(name, s["doc_id"]): [r[0] for r in s["resps"]]
            for name, samples in result["samples"].items() for s in samples}


def assert_same_loglikelihoods(ours: dict, ref: dict, rel: float = 0.0) -> int:
    """Every request's (logprob, is_greedy) agrees (log-probs to 1e-4, or `rel` of their size
    when larger); returns the number of requests compared."""
    a, b = responses(ours), responses(ref)
    assert a.keys() == b.keys()
    n = 0
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            x, y = (x, y) if isinstance(x, list | tuple) else ((x,), (y,))
            # (lm-eval's --log_samples files hold the numbers and flags as strings)
            assert float(x[0]) == pytest.approx(float(y[0]), abs=1e-4, rel=rel), key
            assert [str(v) for v in x[1:]] == [str(v) for v in y[1:]], key  # is_greedy
            n += 1
    return n


def metric(result: dict, task: str, name: str) -> float:
    return result["results"][task][f"{name},none"]


# ---------------------------------------------------------------------------- the three types

@pytest.fixture(scope="module")
def mc_task(tmp_path_factory):
    """Next-sentence questions from Alice, plus an empty context and a trailing-space one."""
    rows = []
    for i, p in enumerate(PARAGRAPHS[:8]):
        cut = p.rfind(" ", 0, len(p) // 2)
        wrong = [q[q.rfind(" ", 0, len(q) // 2):] for q in PARAGRAPHS[9 + 3 * i: 12 + 3 * i]]
        choices = [w.strip() for w in wrong]
        choices.insert(i % 4, p[cut:].strip())
        rows.append({"context": p[:cut], "choices": choices, "gold": i % 4})
    rows.append({"context": "", "choices": ["Alice was", "The Queen"], "gold": 0})
    rows.append({"context": "Alice said \n", "choices": ["yes", "`No!'"], "gold": 1})
    tmp = tmp_path_factory.mktemp("mc")
    data = tmp / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return write_jsonl_mc_task(tmp / "task", data, name="bridge_test_mc")


@pytest.fixture(scope="module")
def mc_results(run, hf_dir, mc_task) -> tuple[dict, dict]:
    return both(run, hf_dir, mc_task)


def test_loglikelihood_equals_hf_backend_on_multiple_choice(mc_task, mc_results):
    ours, ref = mc_results
    assert assert_same_loglikelihoods(ours, ref) == 8 * 4 + 2 + 2
    for m in ("acc", "acc_norm"):
        assert metric(ours, mc_task.name, m) == metric(ref, mc_task.name, m)


def test_loglikelihood_rolling_equals_hf_backend(run, hf_dir, tmp_path):
    texts = [PARAGRAPHS[0][:40], "\n\n".join(PARAGRAPHS[:3]), "\n\n".join(PARAGRAPHS[3:12]),
             "The end.<|endoftext|>Chapter II"]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    task = write_rolling_task(tmp_path / "task", data, name="bridge_test_rolling")
    ours, ref = both(run, hf_dir, task)
    assert len(Tokenizer.load(run / "tokenizer").encode(texts[2])) > 4 * 256  # 5+ windows
    # HFLM returns float32 sums: at ~1e4 nats (1,761 tokens) its own rounding step is ~1e-3.
    assert assert_same_loglikelihoods(ours, ref, rel=1e-7) == len(texts)
    for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert metric(ours, task.name, m) == pytest.approx(metric(ref, task.name, m), rel=1e-6)


def _gsm8k_like(directory: Path) -> Path:
    """A made-up GSM8K directory: questions from Alice, answers ending "#### n"."""
    directory.mkdir()
    for split, paragraphs in (("train", PARAGRAPHS[:10]), ("test", PARAGRAPHS[10:14])):
        rows = [{"question": p[:120], "answer": f"{p[120:200]}\n#### {i}"}
                for i, p in enumerate(paragraphs)]
        (directory / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return directory


def test_generate_until_equals_hf_backend(run, hf_dir, tmp_path):
    task = write_gsm8k_task(tmp_path / "task", _gsm8k_like(tmp_path / "gsm"), shots=2,
                            max_gen_toks=24, name="bridge_test_gsm8k")
    for gen_kwargs in (None, {"until": ["e", "\n"]}):  # the task's stops; stops that do occur
        ours, ref = both(run, hf_dir, task, gen_kwargs=gen_kwargs)
        got, want = responses(ours), responses(ref)
        assert got == want
        assert len(got) == 4 and all(isinstance(t[0], str) for t in got.values())
        texts = [t[0] for t in got.values()]
        assert sum(len(t) > 0 for t in texts) >= 2  # something was generated
        if gen_kwargs:  # cut before the first "e" or newline
            assert all("e" not in t and "\n" not in t for t in texts)
        for f in ("exact_match,strict-match", "exact_match,flexible-extract"):
            assert ours["results"][task.name][f] == ref["results"][task.name][f]
    # The prompts are those of lmforge's own GSM8K task (its shots) over the same questions.
    mine = load_task(f"gsm8k:{task.data}", shots=2).examples
    prompts = {s["doc_id"]: s["arguments"][0][0] for s in ours["samples"][task.name]}
    assert [prompts[i] for i in range(len(mine))] == [e.context for e in mine]


# ------------------------------------------------------------------------------------- MMLU

def test_mmlu_subset_equals_hf_backend(run, hf_dir, tmp_path):
    mmlu = shared_path("fixtures", "eval", "mmlu")
    task = write_mmlu_task(tmp_path / "task", mmlu, subjects=["anatomy", "astronomy",
                           "college_biology"], questions=20, seed=0, name="bridge_test_mmlu")
    ours, ref = both(run, hf_dir, task)
    assert assert_same_loglikelihoods(ours, ref) == 20 * 4
    assert metric(ours, task.name, "acc") == metric(ref, task.name, "acc")
    # The prompt is lm-eval's MMLU prompt, built here by hand from the CSVs.
    sample = ours["samples"]["bridge_test_mmlu_anatomy"][0]
    doc = sample["doc"]
    with open(mmlu / "dev" / "anatomy_dev.csv", encoding="utf-8", newline="") as f:
        dev = list(csv.reader(f))[:5]
    fmt = "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:"
    want = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
            + "".join(fmt.format(q.strip(), a, b, c, d) + f" {ans}\n\n"
                      for q, a, b, c, d, ans in dev)
            + fmt.format(doc["question"].strip(), *doc["choices"]))
    assert [tuple(a) for a in sample["arguments"]] == [(want, f" {c}") for c in "ABCD"]
    # ... and the prompt of lmforge's own MMLU task over the same questions (task.data).
    mine = {e.id: e for e in load_task(f"mmlu:{task.data}").examples}
    for name, samples in ours["samples"].items():
        subject = name.removeprefix("bridge_test_mmlu_")
        for s in samples:
            e = mine[f"{subject}/test/{s['doc_id']}"]
            assert s["arguments"][0][0] == e.context and s["target"] == e.gold


def test_mmlu_yaml_mirrors_lm_evals_own(tmp_path):
    mmlu = shared_path("fixtures", "eval", "mmlu")
    task = write_mmlu_task(tmp_path, mmlu, subjects=["high_school_us_history"], questions=3)
    ours = json.loads((tmp_path / f"{task.name}_high_school_us_history.yaml").read_text())
    template = (LM_EVAL_TASKS / "mmlu" / "default" / "_default_template_yaml").read_text()
    subject = (LM_EVAL_TASKS / "mmlu" / "default" / "mmlu_high_school_us_history.yaml")
    theirs = yaml.safe_load(template) | yaml.safe_load(subject.read_text())
    for key in ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target",
                "fewshot_split", "fewshot_config", "test_split", "description"):
        assert ours[key] == theirs[key], key
    assert ours["doc_to_text"] == MMLU_TEMPLATE
    # The questions are those lmforge's evaluator draws with the same limit and seed.
    subjects = ["high_school_us_history", "virology"]
    task = write_mmlu_task(tmp_path / "two", mmlu, subjects=subjects, questions=7, seed=3)
    drawn = select_examples(load_task(f"mmlu:{mmlu}", subjects=subjects), 7, seed=3)
    assert [e.text for e in load_task(f"mmlu:{task.data}").examples] == [e.text for e in drawn]
    assert task.size == 7


def test_gsm8k_yaml_mirrors_lm_evals_own(tmp_path):
    task = write_gsm8k_task(tmp_path / "task", _gsm8k_like(tmp_path / "gsm"), shots=8)
    ours = json.loads((tmp_path / "task" / f"{task.name}.yaml").read_text())
    theirs = yaml.safe_load((LM_EVAL_TASKS / "gsm8k" / "gsm8k.yaml").read_text())
    for key in ("output_type", "doc_to_text", "doc_to_target", "metric_list", "filter_list",
                "test_split", "repeats"):
        assert ours[key] == theirs[key], key
    assert {k: v for k, v in ours["generation_kwargs"].items() if k != "max_gen_toks"} == \
        theirs["generation_kwargs"]
    assert ours["num_fewshot"] == 8 and task.size == 4


# ------------------------------------------------------------------------- command line, args

def test_command_line_runs_the_lmforge_model(run, hf_dir, mc_task, mc_results, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.eval.lm_eval_bridge", "--model", "lmforge",
         "--model_args", f"run={run}", "--device", "cpu", "--tasks", mc_task.name, "--include_path",
         str(mc_task.include_path), "--batch_size", "4", "--output_path", str(out),
         "--log_samples"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"\|{mc_task.name}\s*\|", proc.stdout)  # lm-eval's results table
    [samples] = list(out.rglob(f"samples_{mc_task.name}_*.jsonl"))
    logged = [json.loads(line) for line in samples.read_text().splitlines()]
    cli = {"samples": {mc_task.name: logged}}
    assert assert_same_loglikelihoods(cli, mc_results[1]) == 8 * 4 + 2 + 2


def test_gen_kwargs_follow_lm_evals_rules():
    def req(**kw):
        return generation_request("Q:", kw)

    assert req() == GenerationRequest("Q:", (), 256, 0.0)
    assert req(until="\n\n", max_new_tokens=9) == GenerationRequest("Q:", ("\n\n",), 9, 0.0)
    assert req(until=["Q:", ""]).stop == ("Q:",)  # lm-eval skips empty stop strings
    assert req(max_gen_toks=5, max_tokens=7).max_tokens == 5  # lm-eval's priority
    assert req(temperature=0.7).temperature == 0.7  # do_sample not given: sample iff T > 0
    assert req(do_sample=False, temperature=0.7).temperature == 0.0
    assert req(do_sample=True).temperature == 1.0
    assert req(do_sample=True, temperature=0.5, seed=3) == GenerationRequest(
        "Q:", (), 256, 0.5, 3)
    assert req(top_p=1.0, top_k=None, num_beams=1).temperature == 0.0  # no-op settings pass
    with pytest.raises(InvalidArgument, match="top_p"):
        req(top_p=0.9)


def test_bad_inputs_are_refused_with_the_reason(run, tmp_path):
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.toml", "checkpoints"):
        os.symlink(run / name, no_tok / name)
    with pytest.raises(InputError, match="no tokenizer"):
        LmforgeLM(run=str(no_tok), device="cpu")
    with pytest.raises(InvalidArgument, match="batch_size"):
        LmforgeLM(run=str(run), device="cpu", batch_size="many")
    with pytest.raises(PathNotFound, match="has no test/ directory"):
        write_mmlu_task(tmp_path / "t", tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"context": "x", "choices": ["a"]}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1: choices must be at least 2"):
        write_jsonl_mc_task(tmp_path / "t", tmp_path / "bad.jsonl")
