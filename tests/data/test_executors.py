"""Executors and tasks: local process pool == inline, shard task outputs and markers, workers that
die with a killed `lmforge data run` (and stop, cleaned up, on SIGTERM), and the same pipeline on
a local Ray instance giving the same files and counts as the local executor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

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
from lmforge.fsutil import temp_prefix
from tests.fresh_process import in_fresh_process
from tests.test_procutil import assert_all_gone, wait_for_children

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


def _slow_pipeline(tmp_path: Path) -> Path:
    """Two ~18 MB inputs: each task takes a few seconds (gopher rules) on a 2-core machine."""
    corpus = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8") * 8
    for i in range(2):
        (tmp_path / f"in{i}.txt").write_text(corpus, encoding="utf-8")
    pipeline = {"input": {"paths": [str(tmp_path / "*.txt")]},
                "output": {"dir": str(tmp_path / "out"), "format": "text"},
                "executor": {"workers": 2}, "steps": [{"name": "pii"}, {"name": "gopher"}]}
    (tmp_path / "p.toml").write_text(tomli_w.dumps(pipeline), encoding="utf-8")
    return tmp_path / "p.toml"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_stop_with_a_killed_or_terminated_data_run(tmp_path: Path, sig: int) -> None:
    """SIGKILL: the workers die with the parent and write no marker. SIGTERM: like Ctrl-C, the
    run stops its workers, removes their temp files and exits 130 with one line."""
    command = [sys.executable, "-m", "lmforge.cli", "data", "run", str(_slow_pipeline(tmp_path)),
               "--no-progress"]
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # not a pipe: orphaned workers would hold it open
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        workers = wait_for_children(proc, 2)
        while len(list((out / "data").glob(".*.tmp"))) < 2 and proc.poll() is None:
            time.sleep(0.02)  # both tasks are writing their output
        workers = [w for w in workers if w.is_running()]
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=30)
    assert_all_gone(workers)
    err = log.read_text()
    time.sleep(0.5)  # a surviving worker would finish its task and write the marker now
    assert not list(out.rglob("*.done"))
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and err.endswith("interrupted\n"), err
        assert "Traceback" not in err
        assert not list(out.rglob("*.tmp"))


def test_rerun_removes_temps_of_dead_writers_only(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("first doc\n<|endoftext|>\nsecond doc", encoding="utf-8")
    config = {"input": {"paths": [str(source)]}, "output": {"dir": str(tmp_path / "out")},
              "executor": {"workers": 1}, "steps": [{"name": "pii"}]}
    run_pipeline(parse_pipeline(config), progress=False)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    data, stage = tmp_path / "out" / "data", next((tmp_path / "out" / "stages").iterdir())
    stale = [data / f".00000-in.txt.{dead}.abcd1234.tmp", stage / f".00000-in.done.{dead}.x.tmp"]
    live = data / f"{temp_prefix(data / '00000-in.txt')}abcd1234.tmp"  # this process writes it
    for path in [*stale, live]:
        path.write_text("partial")
    run_pipeline(parse_pipeline(config), progress=False)
    assert not any(p.exists() for p in stale) and live.exists()


def test_missing_ray_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DataInputError, match=r"pip install 'lmforge\[ray\]'"):
        make_executor("ray")


def _pipeline(tmp_path: Path, out: str, kind: str) -> dict:
    return {"input": {"paths": [str(tmp_path / "*.txt")]},
            "output": {"dir": str(tmp_path / out), "format": ["text", "jsonl"]},
            "executor": {"kind": kind, "workers": 2},
            "steps": [{"name": "pii"}, {"name": "min_length", "min_words": 20},
                      {"name": "exact_line_dedup"}, {"name": "minhash_dedup"}]}


def _ray_and_local_runs(tmp: str) -> list[tuple[list[tuple[str, bytes]], dict]]:
    """The pipeline run on a local Ray and with the local executor: (files, step counts) each."""
    import ray

    tmp_path = Path(tmp)
    chapters = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8").split(
        "\n<|endoftext|>\n")[:12]
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text("\n<|endoftext|>\n".join(chapters[i::3]),
                                               encoding="utf-8")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_pipeline(parse_pipeline(_pipeline(tmp_path, "ray", "ray")), progress=False)
        assert isinstance(make_executor("ray"), RayExecutor) and ray.is_initialized()
    finally:
        ray.shutdown()
    local = run_pipeline(parse_pipeline(_pipeline(tmp_path, "local", "local")), progress=False)
    return [([(p.name, p.read_bytes()) for p in r.files],
             {k: (v["docs_in"], v["kept"], v["removed"], v["modified"])
              for k, v in r.stats.to_dict()["steps"].items()}) for r in (on_ray, local)]


def test_ray_executor_gives_the_local_executor_outputs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    # In its own process: Ray leaves threads and a SIGTERM handler behind (tests/fresh_process.py).
    (ray_files, ray_counts), (local_files, local_counts) = in_fresh_process(
        _ray_and_local_runs, str(tmp_path))
    assert ray_files == local_files
    counts = [ray_counts, local_counts]
    assert counts[0] == counts[1]
    assert counts[0]["exact_line_dedup"][0] == 12
