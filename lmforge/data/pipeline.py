"""Data pipelines from TOML: parse the config, plan it into stages, run the stages resumably.

A pipeline file names the input, the output, the executor and an ordered list of steps::

    [input]
    paths = ["crawl/*.warc.gz"]      # files or globs, relative to the working directory
    format = "auto"                  # or "warc", "wet", "jsonl", "text"
    [output]
    dir = "runs/data/crawl"
    format = "text"                  # "text" (<|endoftext|>-separated), "jsonl", or both: [..]
    [executor]
    kind = "local"                   # or "ray"
    workers = 0                      # processes (0 = every core); 1 runs inline
    [[steps]]
    name = "extract"
    [[steps]]
    name = "langid"
    keep = ["en"]
    min_score = 0.65

Planning (`plan_stages`): consecutive document steps form one *shard stage* — one task per
input file, run in parallel, streaming documents through the steps; each global step (a
deduplication) is a stage of its own that reads every shard of the previous stage. Stage k
writes JSONL shards to ``<output>/stages/<k>-<name>/``; the last shard stage writes the final
output to ``<output>/data/`` instead (a ``write`` stage is added when the pipeline ends with a
global step).

Resumability: each task writes its output atomically, then a completion marker
``<shard>.done`` holding its stats and the hash of its stage's configuration. A stage's hash
covers its steps, the previous stage's hash and (for the first stage) the input files with their
sizes and modification times, so a changed pipeline never reuses stale shards: the run stops
with a message instead, and ``restart=True`` (``--restart``) redoes the changed stages while
keeping the unchanged ones before them. The report ``<output>/stats.json`` sums the markers'
stats, so a resumed run reports the same counts as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import read_toml
from lmforge.data.document import DataInputError
from lmforge.data.executors import (
    EXECUTORS,
    GlobalTask,
    ShardTask,
    make_executor,
    read_marker,
    run_global_task,
    run_shard_task,
)
from lmforge.data.readers import FORMATS as READER_FORMATS
from lmforge.data.stats import STATS_FILE, RunStats, merge_all, write_report
from lmforge.data.steps import STEPS, make_step
from lmforge.data.writers import SUFFIX, check_formats
from lmforge.fsutil import atomic_write_text, refuse_overwriting_inputs, remove_stale_temps

PLAN_FILE = "plan.json"
MAX_WORKERS = 1024  # [executor] workers upper bound (processes started at once)
TABLES = {"input": ("paths", "format"), "output": ("dir", "format"),
          "executor": ("kind", "workers", "address"), "steps": ()}


class PipelineError(DataInputError):
    """A pipeline file or run directory the pipeline cannot use; the message says how to fix it."""


@dataclass
class StepConfig:
    name: str  # a key of lmforge.data.steps.STEPS
    params: dict[str, Any] = field(default_factory=dict)  # as written (defaults not filled in)
    label: str = ""  # unique within the pipeline: the name, or "name#2" for a repeated step


@dataclass
class PipelineConfig:
    inputs: list[str]  # input files or globs
    output_dir: str  # run directory: stages/, data/, stats.json
    steps: list[StepConfig]
    input_format: str = "auto"  # reader format for every input file
    output_format: list[str] = field(default_factory=lambda: ["text"])  # "text" and/or "jsonl"
    executor: str = "local"  # "local" or "ray"
    workers: int = 0  # local processes (0 = os.cpu_count(), 1 = inline); Ray: CPUs if local
    address: str = ""  # Ray cluster address ("" starts a local Ray)


@dataclass
class Stage:
    index: int  # 1-based position in the plan
    name: str  # "extract+langid", "minhash_dedup", "read", "write"
    steps: list[StepConfig]
    is_global: bool
    final: bool  # writes the pipeline's output to <output>/data/
    config_hash: str = ""  # covers this stage, every earlier one and (stage 1) the inputs

    @property
    def dirname(self) -> str:
        return f"{self.index}-{self.name}"


def _check_keys(table: str, values: dict[str, Any], valid: tuple[str, ...]) -> None:
    for key in values:
        if key not in valid:
            raise PipelineError(f"unknown setting {table}.{key}; valid: {', '.join(valid)}")


def parse_pipeline(data: dict[str, Any]) -> PipelineConfig:
    """A `PipelineConfig` from the parsed TOML dict; every key and step parameter is checked."""
    _check_keys("pipeline", data, tuple(TABLES))
    for table, valid in TABLES.items():
        if table != "steps":
            if not isinstance(data.get(table, {}), dict):
                raise PipelineError(f"{table} must be a table ([{table}] with its settings), "
                                    f"got {data[table]!r}")
            _check_keys(f"[{table}]", data.get(table, {}), valid)
    if not isinstance(data.get("steps", []), list):
        raise PipelineError(f"steps must be a list of [[steps]] tables, got {data['steps']!r}")
    inp, out, ex = data.get("input", {}), data.get("output", {}), data.get("executor", {})
    if not inp.get("paths"):
        raise PipelineError("[input] paths is missing; list input files or globs, e.g. "
                            'paths = ["crawl/*.warc.gz"]')
    if not out.get("dir"):
        raise PipelineError('[output] dir is missing; e.g. dir = "runs/data/crawl"')
    paths = [inp["paths"]] if isinstance(inp["paths"], str) else inp["paths"]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise PipelineError(f"[input] paths must be a list of file names or globs, got "
                            f"{inp['paths']!r}")
    if inp.get("format", "auto") not in ("auto", *READER_FORMATS):
        raise PipelineError(f"[input] format {inp['format']!r} is not one of auto, "
                            f"{', '.join(READER_FORMATS)}")
    if not isinstance(out["dir"], str):
        raise PipelineError(f'[output] dir must be a directory name, e.g. dir = "runs/data/x", '
                            f"got {out['dir']!r}")
    fmt = out.get("format", "text")
    config = PipelineConfig(
        inputs=paths, output_dir=str(out["dir"]), steps=_parse_steps(data.get("steps", [])),
        input_format=inp.get("format", "auto"),
        output_format=check_formats([fmt] if isinstance(fmt, str) else list(fmt)),
        executor=ex.get("kind", "local"), workers=ex.get("workers", 0),
        address=ex.get("address", ""))
    if config.executor not in EXECUTORS:
        raise PipelineError(f"executor.kind {config.executor!r} is not one of {EXECUTORS}")
    if type(config.workers) is not int or not 0 <= config.workers <= MAX_WORKERS:
        raise PipelineError(f"executor.workers must be an integer in [0, {MAX_WORKERS}] (0: every "
                            f"core, 1: inline), got {config.workers!r}")
    return config


def _parse_steps(items: list[dict[str, Any]]) -> list[StepConfig]:
    steps: list[StepConfig] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or "name" not in item:
            raise PipelineError(f"step {number} has no name; write [[steps]] name = \"...\" "
                                f"with one of: {', '.join(STEPS)}")
        params = {k: v for k, v in item.items() if k != "name"}
        make_step(item["name"], params)  # validates name and parameters now, not in a worker
        seen[item["name"]] = seen.get(item["name"], 0) + 1
        count = seen[item["name"]]
        label = item["name"] if count == 1 else f"{item['name']}#{count}"
        steps.append(StepConfig(item["name"], params, label))
    return steps


def load_pipeline(
    path: str | os.PathLike, *, inputs: list[str] | None = None, output_dir: str | None = None
) -> PipelineConfig:
    """Read a pipeline TOML; `inputs` / `output_dir` replace [input] paths / [output] dir."""
    data = read_toml(path, PipelineError, "configs/data/")
    if inputs:
        data.setdefault("input", {})["paths"] = list(inputs)
    if output_dir:
        data.setdefault("output", {})["dir"] = str(output_dir)
    return parse_pipeline(data)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Input files matching `patterns` (globs or paths), each pattern sorted, duplicates dropped.

    >>> expand_inputs(["no/such/*.gz"])
    Traceback (most recent call last):
    lmforge.data.pipeline.PipelineError: input 'no/such/*.gz' matches no file; check [input] paths
    """
    files: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [
            pattern]
        if not matches or not Path(matches[0]).exists():
            raise PipelineError(f"input {pattern!r} matches no file; check [input] paths")
        for m in map(Path, matches):
            if m.is_dir():
                raise PipelineError(f"input {m} is a directory; give files or a glob like "
                                    f"'{m}/*.jsonl'")
            files[m] = None
    return list(files)


def plan_stages(config: PipelineConfig, inputs: list[Path]) -> list[Stage]:
    """Group steps into stages and hash each stage's configuration (see the module docstring)."""
    stages: list[Stage] = []
    for step in config.steps:
        if STEPS[step.name].is_global:
            stages.append(Stage(0, step.name, [step], True, False))
        elif stages and not stages[-1].is_global:
            stages[-1].steps.append(step)
        else:
            stages.append(Stage(0, "", [step], False, False))
    if not stages or stages[0].is_global:
        stages.insert(0, Stage(0, "read", [], False, False))
    if stages[-1].is_global:
        stages.append(Stage(0, "write", [], False, False))
    stages[-1].final = True
    previous = json.dumps({"format": config.input_format, "inputs": [
        (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]})
    for index, stage in enumerate(stages, 1):
        stage.index = index
        stage.name = stage.name or "+".join(s.name for s in stage.steps)
        key = {"previous": previous, "steps": [(s.name, _full_params(s)) for s in stage.steps],
               "output": config.output_format if stage.final else "shards"}
        stage.config_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        previous = stage.config_hash
    return stages


def _full_params(step: StepConfig) -> dict[str, Any]:
    return {**STEPS[step.name].PARAMS, **step.params}


def shard_names(inputs: list[Path]) -> list[str]:
    """Unique shard names from input paths: index plus the file name up to its first dot.

    >>> shard_names([Path("a/crawl.warc.gz"), Path("b/crawl.warc.gz")])
    ['00000-crawl', '00001-crawl']
    """
    return [f"{i:05d}-{re.sub(r'[^A-Za-z0-9_-]', '_', p.name.split('.')[0])}"
            for i, p in enumerate(inputs)]


@dataclass
class PipelineResult:
    output_dir: Path
    stats: RunStats  # every step's counts, summed over shards and stages
    files: list[Path]  # the final output files, in input order
    tasks_run: int  # tasks executed by this call
    tasks_skipped: int  # tasks already completed by an earlier (interrupted) run
    wall_seconds: float


def run_pipeline(
    config: PipelineConfig, *, restart: bool = False, progress: bool = True
) -> PipelineResult:
    """Run (or resume) `config`; writes ``<output>/data/``, ``stats.json`` and ``plan.json``.

    Completed tasks of an earlier run with the same configuration are skipped. If the
    configuration changed since, raises `PipelineError` unless `restart`, which deletes the
    stages from the first changed one on and redoes them. An input inside ``<output>/data/`` or
    ``<output>/stages/`` is refused (`OutputPathError`) before anything is written.
    """
    start = time.perf_counter()
    inputs = expand_inputs(config.inputs)
    stages = plan_stages(config, inputs)
    out = Path(config.output_dir)
    refuse_overwriting_inputs([out / PLAN_FILE, out / STATS_FILE], inputs,
                              output_dirs=[out / "data", out / "stages"])
    with _removed_unless_a_task_finished(out):
        _check_plan(out, config, inputs, stages, restart)
        names = shard_names(inputs)
        sources = [str(p) for p in inputs]
        executor = make_executor(config.executor, config.workers, config.address)
        stats: list[RunStats] = []
        ran = skipped = 0
        try:
            for stage in stages:
                tasks = _stage_tasks(stage, config, out, sources, names)
                todo = [t for t in tasks if read_marker(t.marker, stage.config_hash) is None]
                fn = run_global_task if stage.is_global else run_shard_task
                executor.map(fn, todo, desc=stage.dirname, progress=progress)
                ran, skipped = ran + len(todo), skipped + len(tasks) - len(todo)
                for t in tasks:
                    marker = read_marker(t.marker, stage.config_hash)
                    assert marker is not None, f"task finished without its marker {t.marker}"
                    stats.append(marker)
                sources = [str(out / "stages" / stage.dirname / f"{n}.jsonl") for n in names]
        finally:
            executor.close()
    total = merge_all(stats)
    wall = time.perf_counter() - start
    write_report(out / STATS_FILE, total, inputs=[str(p) for p in inputs],
                 stages=[s.dirname for s in stages], wall_seconds=round(wall, 3))
    files = [out / "data" / f"{n}{SUFFIX[f]}" for n in names for f in config.output_format]
    return PipelineResult(out, total, files, ran, skipped, wall)


@contextlib.contextmanager
def _removed_unless_a_task_finished(out: Path) -> Iterator[None]:
    """Remove `out` again if the block fails before any task finished and `out` did not exist
    before: a run refused for bad input leaves nothing behind, an interrupted one its work."""
    fresh = not out.exists()
    try:
        yield
    except BaseException:
        if fresh and not any(out.rglob("*.done")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _stage_tasks(stage: Stage, config: PipelineConfig, out: Path, sources: list[str],
                 names: list[str]) -> list[ShardTask | GlobalTask]:
    stage_dir = out / "stages" / stage.dirname
    steps = [(s.label, s.name, s.params) for s in stage.steps]
    if stage.is_global:
        return [GlobalTask(steps[0], sources, str(stage_dir), str(stage_dir / "_global.done"),
                           stage.config_hash)]
    reader = config.input_format if stage.index == 1 else None
    return [
        ShardTask(
            source=source, reader_format=reader, steps=steps,
            output=str(out / "data" / name if stage.final else stage_dir / f"{name}.jsonl"),
            formats=config.output_format if stage.final else None,
            marker=str(stage_dir / f"{name}.done"), config_hash=stage.config_hash)
        for source, name in zip(sources, names, strict=True)
    ]


def _check_plan(out: Path, config: PipelineConfig, inputs: list[Path], stages: list[Stage],
                restart: bool) -> None:
    """Compare with the plan of an earlier run in `out`; keep, refuse or clean (restart)."""
    plan_path = out / PLAN_FILE
    new = [[s.dirname, s.config_hash] for s in stages]
    if plan_path.is_file():
        old = json.loads(plan_path.read_text(encoding="utf-8"))["stages"]
        same = 0
        while same < min(len(old), len(new)) and old[same] == new[same]:
            same += 1
        if same < max(len(old), len(new)):
            if not restart:
                changed = new[same][0] if same < len(new) else old[same][0]
                raise PipelineError(
                    f"{out} holds a run of a different pipeline or inputs (from stage {changed} "
                    "on); rerun with --restart (restart=True) to redo the changed stages, or "
                    "choose another output directory")
            for dirname, _ in old[same:]:
                shutil.rmtree(out / "stages" / dirname, ignore_errors=True)
            shutil.rmtree(out / "data", ignore_errors=True)
            (out / STATS_FILE).unlink(missing_ok=True)
    for directory in [*out.glob("stages/*/"), out / "data"]:
        remove_stale_temps(directory)  # left by a killed run; a live writer's are kept
    plan = {"stages": new, "inputs": [str(p) for p in inputs], "config": asdict(config)}
    atomic_write_text(plan_path, json.dumps(plan, indent=2, ensure_ascii=False) + "\n")
