"""The tasks of a pipeline stage and the executors that run them: local processes or Ray.

A task is plain picklable data (`ShardTask`, `GlobalTask`) and a top-level function runs it
(`run_shard_task`, `run_global_task`), so every executor runs the same code and writes the same
files; an executor only decides where the function runs:

- ``local``: a `concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (safe
  with threads, and the same on Linux and macOS), a tqdm bar over tasks; ``workers=1`` runs the
  tasks inline in this process, which is what you want under a debugger. The workers die with
  this process (`lmforge.procutil`): a killed run leaves no worker writing shards or markers.
  On Ctrl-C / SIGTERM they are killed at once and their temp files removed.
- ``ray``: one ``ray.remote`` task per shard on a local Ray (``ray.init()``) or a cluster
  (``address="ray://head:10001"`` or ``"auto"``). On a cluster every node must see the input and
  output paths (a shared file system) and have lmforge installed. Ray is the optional extra
  ``lmforge[ray]``.

A task writes its outputs atomically and then its completion marker (``.done``: JSON with the
stage's config hash and the task's stats); the driver (`lmforge.data.pipeline`) skips tasks
whose marker exists, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from lmforge.data.document import DataInputError, Document, read_shard, write_shard
from lmforge.data.stats import RunStats
from lmforge.data.steps import DocStep, GlobalStep, apply_step, make_step
from lmforge.data.writers import write_output
from lmforge.fsutil import atomic_write_text, remove_stale_temps
from lmforge.procutil import kill_pool, process_pool

EXECUTORS = ("local", "ray")


@dataclass
class ShardTask:
    source: str  # input file (first stage) or JSONL shard of the previous stage
    reader_format: str | None  # read_documents format for input files; None: a JSONL shard
    steps: list[tuple[str, str, dict[str, Any]]]  # (label, step name, params), in order
    output: str  # JSONL shard path, or the output stem (no suffix) when `formats` is set
    formats: list[str] | None  # final output formats ("text", "jsonl"); None: a JSONL shard
    marker: str  # completion marker path
    config_hash: str  # stored in the marker


@dataclass
class GlobalTask:
    step: tuple[str, str, dict[str, Any]]  # (label, step name, params)
    shards: list[str]  # every shard of the previous stage
    output_dir: str  # receives shards of the same names
    marker: str
    config_hash: str


def _timed(docs: Iterator[Document], stats: RunStats) -> Iterator[Document]:
    """Yield `docs`, adding the time spent producing each to the stats of step ``read``."""
    read = stats.step("read")
    while True:
        start = time.perf_counter()
        doc = next(docs, None)
        read.seconds += time.perf_counter() - start
        if doc is None:
            return
        read.docs_in += 1
        read.kept += 1
        yield doc


def _read(task: ShardTask, stats: RunStats) -> Iterator[Document]:
    if task.reader_format is None:
        return read_shard(task.source)
    from lmforge.data.readers import read_documents

    skipped = stats.step("read").removed  # a Counter: the reader counts its skips in it
    return _timed(read_documents(Path(task.source), format=task.reader_format, skipped=skipped),
                  stats)


def _finish(marker: str, config_hash: str, stats: RunStats) -> dict[str, Any]:
    data = {"config_hash": config_hash, "stats": stats.to_dict()}
    atomic_write_text(marker, json.dumps(data, ensure_ascii=False) + "\n")
    return data


def run_shard_task(task: ShardTask) -> dict[str, Any]:
    """Read one shard, stream it through the document steps, write it; then the marker."""
    stats = RunStats()
    docs = _read(task, stats)
    # A shard task holds only document steps: the pipeline puts each global step in its own task.
    steps = [(stats.step(label), cast(DocStep, make_step(name, params)))
             for label, name, params in task.steps]

    def processed() -> Iterator[Document]:
        for doc in docs:
            for step_stats, step in steps:
                out = apply_step(step, doc, step_stats)
                if out is None:
                    break
                doc = out
            else:
                yield doc

    if task.formats is None:
        write_shard(task.output, processed())
    else:
        start, write = time.perf_counter(), stats.step("write")
        stats.output = write_output(task.output, processed(), task.formats, write)
        write.kept = stats.output["documents"]
        write.docs_in = write.kept + sum(write.removed.values())
        busy = sum(s.seconds for label, s in stats.steps.items() if label != "write")
        write.seconds = max(0.0, time.perf_counter() - start - busy)
    if "read" in stats.steps:
        read = stats.steps["read"]
        read.docs_in += sum(read.removed.values())
    return _finish(task.marker, task.config_hash, stats)


def run_global_task(task: GlobalTask) -> dict[str, Any]:
    """Run one global step over every shard of the previous stage; then the marker."""
    label, name, params = task.step
    stats = RunStats()
    step = cast(GlobalStep, make_step(name, params))  # a global task holds one global step
    step.run([Path(s) for s in task.shards], Path(task.output_dir), stats.step(label))
    missing = [s for s in task.shards if not (Path(task.output_dir) / Path(s).name).is_file()]
    if missing:
        raise DataInputError(f"step {name!r} did not write {missing[0]} into {task.output_dir}")
    return _finish(task.marker, task.config_hash, stats)


class LocalExecutor:
    """Tasks in a spawn-started process pool (``workers`` processes), or inline for workers=1."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Callable, tasks: list, *, desc: str = "", progress: bool = True) -> list:
        """`[fn(t) for t in tasks]`, computed in parallel; results in task order."""
        bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress or not tasks)
        with bar:
            if self.workers == 1 or len(tasks) <= 1:
                return [_tick(bar, fn(t)) for t in tasks]
            pool = process_pool(min(self.workers, len(tasks)), method="spawn")
            try:
                futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
                results: list = [None] * len(tasks)
                for future in as_completed(futures):
                    results[futures[future]] = _tick(bar, future.result())
            except Exception:
                pool.shutdown(wait=True)  # the other tasks finish: a rerun skips them
                raise
            except BaseException:  # Ctrl-C, SIGTERM: stop now, drop the killed tasks' temps
                kill_pool(pool)
                for directory in _output_dirs(tasks):
                    remove_stale_temps(directory)
                raise
            pool.shutdown(wait=True)
            return results

    def close(self) -> None:
        """Nothing to release: each `map` call owns its pool."""


def _output_dirs(tasks: list) -> set[Path]:
    """The directories the pipeline tasks among `tasks` write into (outputs and markers)."""
    dirs = set()
    for task in tasks:
        if isinstance(task, ShardTask):
            dirs |= {Path(task.output).parent, Path(task.marker).parent}
        elif isinstance(task, GlobalTask):
            dirs |= {Path(task.output_dir), Path(task.marker).parent}
    return dirs


def _tick(bar: tqdm, result: Any) -> Any:
    bar.update(1)
    return result


class RayExecutor:
    """One ``ray.remote`` task per shard; starts (and later stops) a local Ray unless one runs."""

    def __init__(self, workers: int = 0, address: str = "") -> None:
        try:
            import ray
        except ImportError:
            raise DataInputError(
                "the Ray executor needs Ray: pip install 'lmforge[ray]' (or pip install ray), "
                'or use [executor] kind = "local"') from None
        self.ray = ray
        self.started = not ray.is_initialized()
        # ray.init installs a SIGTERM handler and leaves it after shutdown; restored in close().
        self.sigterm = signal.getsignal(signal.SIGTERM)
        if self.started:
            kwargs: dict[str, Any] = {"address": address} if address else {
                "num_cpus": workers or None, "include_dashboard": False}
            ray.init(log_to_driver=False, **kwargs)

    def map(self, fn: Callable, tasks: list, *, desc: str = "", progress: bool = True) -> list:
        remote = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        refs = [remote.remote(t) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(tasks)
        pending = list(refs)
        with tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress) as bar:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                results[index[done[0]]] = _tick(bar, self.ray.get(done[0]))
        return results

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            signal.signal(signal.SIGTERM, self.sigterm)


def make_executor(kind: str, workers: int = 0, address: str = "") -> LocalExecutor | RayExecutor:
    """The executor `kind` ("local" or "ray"); call `.close()` when done."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, address)
    raise DataInputError(f"executor {kind!r} is not one of {EXECUTORS}")


def read_marker(marker: str | os.PathLike, config_hash: str) -> RunStats | None:
    """The stats stored in a completion marker, or None if it is absent or from another config."""
    path = Path(marker)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("config_hash") != config_hash:
        return None
    return RunStats.from_dict(data["stats"])

