"""Executors and tasks: local process pool == inline, shard task outputs and markers, and the
same pipeline on a local Ray instance giving the same files and counts as the local executor."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from lmforge.data.document import DataInputError, Document, read_shard, write_shard
from lmforge.data.executors import (
    LocalExecutor,
    RayExecutor,
    ShardTask,
    make_executor,
    read_marker,
    run_shard_task,
)
from lmforge.data.pipeline import parse_pipeline, run_pipeline
from lmforge.data.writers import check_formats

REPO = Path(__file__).resolve().parents[2]


def _shard(path: Path, texts: list[str]) -> Path:
    write_shard(path, [Document(f"d{i}", t) for i, t in enumerate(texts)])
    return path


def test_local_pool_returns_results_in_task_order() -> None:
    tasks = [["jsonl"], ["text"], ["text", "jsonl"]]
    pooled = LocalExecutor(workers=2).map(check_formats, tasks, progress=False)
    assert pooled == LocalExecutor(workers=1).map(check_formats, tasks, progress=False) == tasks


def test_local_pool_reraises_the_task_error() -> None:
    with pytest.raises(DataInputError, match="parquet"):
        LocalExecutor(workers=2).map(check_formats, [["text"], ["parquet"]], progress=False)


def test_shard_task_writes_output_then_marker_with_stats(tmp_path: Path) -> None:
    source = _shard(tmp_path / "in.jsonl", ["mail bob@example.org now", "", "x y z w"])
    task = ShardTask(source=str(source), reader_format=None,
                     steps=[("pii", "pii", {}), ("min_length", "min_length", {"min_words": 2})],
                     output=str(tmp_path / "out.jsonl"), formats=None,
                     marker=str(tmp_path / "out.done"), config_hash="h1")
    run_shard_task(task)
    assert [d.text for d in read_shard(tmp_path / "out.jsonl")] == [
        "mail |||EMAIL_ADDRESS||| now", "x y z w"]
    stats = read_marker(tmp_path / "out.done", "h1")
    assert stats.steps["pii"].modified == {"email": 1}
    assert stats.steps["min_length"].removed == {"fewer than 1 characters": 1}
    assert read_marker(tmp_path / "out.done", "other config") is None
    assert read_marker(tmp_path / "absent.done", "h1") is None


def test_final_shard_task_writes_text_and_jsonl(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("first doc\n<|endoftext|>\nsecond doc", encoding="utf-8")
    task = ShardTask(source=str(source), reader_format="text", steps=[],
                     output=str(tmp_path / "final"), formats=["text", "jsonl"],
                     marker=str(tmp_path / "final.done"), config_hash="h")
    result = run_shard_task(task)
    assert (tmp_path / "final.txt").read_text() == (
        "first doc\n<|endoftext|>\nsecond doc\n<|endoftext|>\n")
    assert [d.text for d in read_shard(tmp_path / "final.jsonl")] == ["first doc", "second doc"]
    assert result["stats"]["output"] == {"documents": 2, "bytes": 19, "files": 2}


def test_missing_ray_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DataInputError, match=r"pip install 'lmforge\[ray\]'"):
        make_executor("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)  # Ray leaves its handler; later tests fork workers


def _pipeline(tmp_path: Path, out: str, kind: str) -> dict:
    return {"input": {"paths": [str(tmp_path / "*.txt")]},
            "output": {"dir": str(tmp_path / out), "format": ["text", "jsonl"]},
            "executor": {"kind": kind, "workers": 2},
            "steps": [{"name": "pii"}, {"name": "min_length", "min_words": 20},
                      {"name": "exact_line_dedup"}, {"name": "minhash_dedup"}]}


def test_ray_executor_gives_the_local_executor_outputs(tmp_path: Path, local_ray) -> None:
    chapters = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8").split(
        "\n<|endoftext|>\n")[:12]
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text("\n<|endoftext|>\n".join(chapters[i::3]),
                                               encoding="utf-8")
    on_ray = run_pipeline(parse_pipeline(_pipeline(tmp_path, "ray", "ray")), progress=False)
    assert isinstance(make_executor("ray"), RayExecutor) and local_ray.is_initialized()
    local = run_pipeline(parse_pipeline(_pipeline(tmp_path, "local", "local")), progress=False)
    assert [p.name for p in on_ray.files] == [p.name for p in local.files]
    for a, b in zip(on_ray.files, local.files, strict=True):
        assert a.read_bytes() == b.read_bytes()
    counts = [{k: (v["docs_in"], v["kept"], v["removed"], v["modified"])
               for k, v in r.stats.to_dict()["steps"].items()} for r in (on_ray, local)]
    assert counts[0] == counts[1]
    assert counts[0]["exact_line_dedup"][0] == 12
