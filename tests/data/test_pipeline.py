"""Pipelines: TOML parsing errors, stage planning and hashing, end-to-end runs checked against the
component functions applied by hand, the stats report, resuming after SIGKILL, and --restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.data.document import DataInputError, Document, read_shard
from lmforge.data.pii import mask_pii
from lmforge.data.pipeline import (
    PipelineError,
    expand_inputs,
    load_pipeline,
    parse_pipeline,
    plan_stages,
    run_pipeline,
)
from lmforge.data.quality import gopher_quality_failures
from lmforge.data.readers import read_text
from lmforge.data.stats import StepStats, read_report
from lmforge.data.writers import format_text, write_output

REPO = Path(__file__).resolve().parents[2]
CHAPTERS = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8").split("\n<|endoftext|>\n")
GERMAN = ("Der schnelle braune Fuchs springt über den faulen Hund, und die Kinder spielen "
          "den ganzen Nachmittag im Garten hinter dem alten Haus am Fluss. ") * 5
CONTACT = ("Write to alice@example.com or call 283-182-3829 for the minutes of the meeting; the "
           "committee reviews every letter it receives and answers within a week. ") * 4
SHORT = "The cat sat on the mat and looked at the door for a long time."


def _corpus(tmp_path: Path) -> list[Path]:
    """Two text inputs: English chapters, a German and a contact doc, a short one, a copy."""
    a = [CHAPTERS[0], GERMAN, CONTACT, SHORT]
    b = [CHAPTERS[1], CHAPTERS[0], CHAPTERS[2]]
    paths = []
    for name, docs in (("a.txt", a), ("b.txt", b)):
        (tmp_path / name).write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
        paths.append(tmp_path / name)
    return paths


def _config(tmp_path: Path, steps: list[dict], out: str = "out", **executor) -> dict:
    return {"input": {"paths": [str(tmp_path / "*.txt")]},
            "output": {"dir": str(tmp_path / out), "format": ["text", "jsonl"]},
            "executor": {"workers": 1, **executor}, "steps": steps}


STEPS = [{"name": "langid", "keep": ["en"], "min_score": 0.5}, {"name": "pii"},
         {"name": "gopher"}, {"name": "minhash_dedup", "threshold": 0.8}]


@pytest.mark.parametrize(("data", "message"), [
    ({"steps": [{"name": "lang_id"}]}, "unknown step 'lang_id'; valid steps: extract, langid"),
    ({"steps": [{"name": "langid", "kep": ["en"]}]}, "no parameter 'kep'; valid: keep, min_score"),
    ({"steps": [{"name": "langid", "keep": "en"}]}, "keep must be a list of strings"),
    ({"steps": [{"name": "pii", "kinds": ["ssn"]}]}, "unknown kind(s) ['ssn']"),
    ({"steps": [{"name": "quality"}]}, "needs model ="),
    ({"steps": [{"keep": ["en"]}]}, "step 1 has no name"),
    ({"executor": {"kind": "spark"}}, "executor.kind 'spark' is not one of"),
    ({"executor": {"cores": 2}}, "unknown setting [executor].cores; valid: kind, workers"),
    ({"output": {"dir": "o", "format": "parquet"}}, "output format(s) ['parquet'] invalid"),
    ({"input": {}}, "[input] paths is missing"),
])
def test_invalid_pipelines_name_the_problem(data: dict, message: str) -> None:
    base = {"input": {"paths": ["x.txt"]}, "output": {"dir": "o"}}
    with pytest.raises(DataInputError) as e:
        parse_pipeline({**base, **data})
    assert message in str(e.value)


def test_plan_groups_document_steps_and_isolates_global_ones(tmp_path: Path) -> None:
    inputs = _corpus(tmp_path)
    steps = [{"name": "exact_line_dedup"}, {"name": "langid"}, {"name": "min_length"},
             {"name": "minhash_dedup"}, {"name": "min_length", "min_words": 5}]
    config = parse_pipeline(_config(tmp_path, steps))
    stages = plan_stages(config, inputs)
    assert [(s.dirname, s.is_global, s.final) for s in stages] == [
        ("1-read", False, False), ("2-exact_line_dedup", True, False),
        ("3-langid+min_length", False, False), ("4-minhash_dedup", True, False),
        ("5-min_length", False, True)]
    assert [s.label for s in config.steps][-1] == "min_length#2"
    # A changed parameter changes the hash of its stage and of every later one, not earlier ones.
    steps[3]["threshold"] = 0.5
    changed = plan_stages(parse_pipeline(_config(tmp_path, steps)), inputs)
    same = [a.config_hash == b.config_hash for a, b in zip(stages, changed, strict=True)]
    assert same == [True, True, True, False, False]


def test_expand_inputs_rejects_missing_and_directories(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.warc.gz")])
    with pytest.raises(PipelineError, match="is a directory"):
        expand_inputs([str(tmp_path)])


def _reference(paths: list[Path]) -> list[str]:
    """The pipeline applied by hand: langid en, PII masks, Gopher rules, exact duplicate docs."""
    from lmforge.data.langid import identify_language

    kept = []
    for path in paths:
        for doc in read_text(path):
            lang, score = identify_language(doc.text)
            text = mask_pii(doc.text)[0]
            if lang == "en" and score >= 0.5 and not gopher_quality_failures(text):
                kept.append(text)
    # The only near-duplicates here are exact copies (CHAPTERS[0] twice): the second goes.
    return [t for i, t in enumerate(kept) if t not in kept[:i]]


def test_end_to_end_matches_the_components_and_reports_reasons(tmp_path: Path) -> None:
    inputs = _corpus(tmp_path)
    result = run_pipeline(parse_pipeline(_config(tmp_path, STEPS)), progress=False)
    out = tmp_path / "out" / "data"
    shards = [out / f"{name}.jsonl" for name in ("00000-a", "00001-b")]
    texts = [doc.text for shard in shards for doc in read_shard(shard)]
    assert texts == _reference(inputs)
    joined = tmp_path / "joined.txt"
    joined.write_text("".join((out / f"{n}.txt").read_text(encoding="utf-8")
                              for n in ("00000-a", "00001-b")), encoding="utf-8")
    assert [d.text for d in read_text(joined)] == [t.rstrip("\n") for t in texts]
    s = result.stats.steps
    assert list(s) == ["read", "langid", "pii", "gopher", "minhash_dedup", "write"]
    assert (s["read"].kept, s["langid"].docs_in, s["langid"].removed["lang=de"]) == (7, 7, 1)
    assert dict(s["pii"].modified) == {"email": 4, "phone": 4} and s["pii"].docs_modified == 1
    assert s["gopher"].removed == {"gopher: too few words": 1}
    assert s["minhash_dedup"].docs_in == 5 and s["minhash_dedup"].kept == 4
    assert result.stats.output["documents"] == len(texts) == 4
    report, extra = read_report(tmp_path / "out")
    assert report.to_dict() == result.stats.to_dict()
    assert extra["stages"] == ["1-langid+pii+gopher", "2-minhash_dedup", "3-write"]


def test_writer_keeps_separators_out_of_documents_and_counts_them(tmp_path: Path) -> None:
    docs = [Document("a", "one <|endoftext|> two"), Document("b", "<|endoftext|>\n"),
            Document("c", "x<|endo<|endoftext|>ftext|>y")]
    stats = StepStats()
    counts = write_output(tmp_path / "out", docs, ["text", "jsonl"], stats)
    text = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert text == "one  two\n<|endoftext|>\nxy\n<|endoftext|>\n"
    assert [d.text for d in read_shard(tmp_path / "out.jsonl")] == ["one  two", "xy"]
    assert (counts["documents"], counts["bytes"]) == (2, len("one  twoxy"))
    assert stats.modified == {"special_token_removed": 4} and stats.docs_modified == 3
    assert stats.removed == {"empty after special_token_removed": 1}
    assert format_text([Document("d", "<|endoftext|>ok")]) == "ok\n<|endoftext|>\n"


def _snapshot(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")
            if p.is_file()}


def test_rerun_skips_done_tasks_and_a_changed_pipeline_needs_restart(tmp_path: Path) -> None:
    _corpus(tmp_path)
    config = parse_pipeline(_config(tmp_path, STEPS))
    first = run_pipeline(config, progress=False)
    before = _snapshot(tmp_path / "out" / "stages")
    again = run_pipeline(config, progress=False)
    assert (again.tasks_run, again.tasks_skipped) == (0, first.tasks_run)
    assert _snapshot(tmp_path / "out" / "stages") == before
    assert again.stats.to_dict()["steps"].keys() == first.stats.to_dict()["steps"].keys()
    changed = parse_pipeline(_config(tmp_path, [*STEPS[:3], {**STEPS[3], "threshold": 0.9}]))
    with pytest.raises(PipelineError, match=r"from stage 2-minhash_dedup on.*--restart"):
        run_pipeline(changed, progress=False)
    redone = run_pipeline(changed, restart=True, progress=False)
    assert (redone.tasks_run, redone.tasks_skipped) == (1 + 2, 2)  # stage 1 kept, 2 and 3 redone
    after = _snapshot(tmp_path / "out" / "stages")
    assert {k: v for k, v in after.items() if k.startswith("1-")} == {
        k: v for k, v in before.items() if k.startswith("1-")}


def test_killed_run_resumes_without_redoing_completed_shards(tmp_path: Path) -> None:
    """SIGKILL `lmforge data run` after the first shard marker; the re-run finishes the rest."""
    for i in range(8):  # ~0.3 MB shards: the first marker comes well before the last one
        (tmp_path / f"part{i}.txt").write_text("\n<|endoftext|>\n".join(CHAPTERS[i::8]),
                                               encoding="utf-8")
    steps = [{"name": "pii"}, {"name": "min_length", "min_words": 100},
             {"name": "exact_line_dedup"}]
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(_toml(_config(tmp_path, steps, out="killed")), encoding="utf-8")
    command = [sys.executable, "-m", "lmforge.cli", "data", "run", str(pipeline), "--no-progress"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stage = tmp_path / "killed" / "stages" / "1-pii+min_length"
    while not list(stage.glob("*.done")) and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()
    done = {p: p.stat().st_mtime_ns for p in stage.glob("[!.]*")}  # not temp files
    assert 1 <= len([p for p in done if p.suffix == ".done"]) < 8
    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "already done" in resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in done} == done  # completed shards not rewritten
    assert not list((tmp_path / "killed").rglob("*.tmp"))
    reference = run_pipeline(parse_pipeline(_config(tmp_path, steps, out="ref")), progress=False)
    for path in reference.files:
        assert (tmp_path / "killed" / "data" / path.name).read_bytes() == path.read_bytes()
    report = json.loads((tmp_path / "killed" / "stats.json").read_text())
    counts = {k: {f: v[f] for f in ("docs_in", "kept", "removed", "modified")}
              for k, v in report["steps"].items()}
    assert counts == {k: {f: v[f] for f in ("docs_in", "kept", "removed", "modified")}
                      for k, v in reference.stats.to_dict()["steps"].items()}


def _toml(data: dict) -> str:
    import tomli_w

    return tomli_w.dumps(data)


def test_load_pipeline_overrides_inputs_and_output(tmp_path: Path) -> None:
    _corpus(tmp_path)
    path = tmp_path / "p.toml"
    path.write_text(_toml(_config(tmp_path, [{"name": "min_length"}])), encoding="utf-8")
    config = load_pipeline(path, inputs=[str(tmp_path / "a.txt")], output_dir="elsewhere")
    assert (config.inputs, config.output_dir) == ([str(tmp_path / "a.txt")], "elsewhere")
    with pytest.raises(PipelineError, match="does not exist"):
        load_pipeline(tmp_path / "missing.toml")


@pytest.mark.parametrize(("step", "message"), [
    ({"name": "minhash_dedup", "threshold": 1.5}, "threshold must be in (0, 1]"),
    ({"name": "minhash_dedup", "threshold": 0}, "threshold must be in (0, 1]"),
    ({"name": "minhash_dedup", "num_bands": 0}, "num_bands must be at least 1"),
    ({"name": "minhash_dedup", "num_bands": 15}, "num_bands (15) must divide num_hashes (112)"),
    ({"name": "minhash_dedup", "ngram": 0}, "ngram must be in [1, 1000]"),
    ({"name": "minhash_dedup", "num_hashes": 10**9}, "num_hashes must be in [1, 8192]"),
    ({"name": "minhash_dedup", "seed": -1}, "seed must be >= 0"),
    ({"name": "min_length", "min_words": -10}, "min_words must be >= 0, got -10"),
    ({"name": "min_length", "min_chars": -1}, "min_chars must be >= 0"),
    ({"name": "langid", "min_score": 2.0}, "min_score must be in [0, 1]"),
    ({"name": "quality", "model": "q.bin", "min_score": float("nan")}, "min_score must be in"),
    ({"name": "harmful", "nsfw_threshold": 0.0}, "nsfw_threshold must be > 0 (1 or more: off)"),
    ({"name": "harmful", "toxic_threshold": float("inf")}, "toxic_threshold must be > 0"),
])
def test_step_parameters_are_range_checked_when_the_pipeline_loads(
    tmp_path: Path, step: dict, message: str
) -> None:
    _corpus(tmp_path)
    with pytest.raises(DataInputError, match=re.escape(message)):
        parse_pipeline(_config(tmp_path, [{"name": "langid"}, {"name": "pii"}, step]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"executor": {"workers": -1}}, "executor.workers must be an integer in [0, 1024]"),
    ({"executor": {"workers": 100_000}}, "executor.workers must be an integer in [0, 1024]"),
    ({"executor": {"workers": True}}, "executor.workers must be an integer"),
    ({"input": {"paths": 5}}, "[input] paths must be a list"),
    ({"input": {"paths": ["a.txt"], "format": "xml"}}, "[input] format 'xml' is not one of"),
    ({"output": {"dir": 3}}, "[output] dir must be a directory name"),
])
def test_pipeline_tables_are_checked(tmp_path: Path, change: dict, message: str) -> None:
    data = {**_config(tmp_path, STEPS), **change}
    with pytest.raises(PipelineError, match=re.escape(message)):
        parse_pipeline(data)


def test_a_pipeline_may_not_read_from_its_own_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "x.txt").write_text(CHAPTERS[0], encoding="utf-8")
    config = parse_pipeline({"input": {"paths": [str(out / "data" / "x.txt")]},
                             "output": {"dir": str(out)}, "executor": {"workers": 1},
                             "steps": [{"name": "min_length"}]})
    with pytest.raises(ValueError, match="which would be overwritten"):
        run_pipeline(config, progress=False)
    assert (out / "data" / "x.txt").read_text(encoding="utf-8") == CHAPTERS[0]
    assert not (out / "plan.json").exists()
