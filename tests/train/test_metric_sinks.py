"""Metric sinks of the one metrics logger: TensorBoard event files and W&B offline runs hold
exactly what metrics.jsonl holds, across a crash and resume; a missing package is a clear error
before anything is written."""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import ConfigError, LoggingConfig, TrainConfig
from lmforge.train import loop
from lmforge.train.metrics import MetricsLogger, read_metrics
from tests.train.test_eval_during_training import tiny_config

CRASH, RESUMED_FROM = 11, 8  # checkpoints every 4 steps: a crash at 11 resumes from 8


def sink_config(tmp_path: Path, **logging) -> TrainConfig:
    config = tiny_config(tmp_path, max_steps=14, log_interval=1)
    config.logging = LoggingConfig(**logging)
    return config


def crash_and_resume(config: TrainConfig, run: Path, monkeypatch) -> None:
    """Train `run`, crash before step CRASH + 1 (after logging steps up to CRASH), resume."""
    real_step = loop.Trainer.train_step

    def crash(self):
        if self.step == CRASH:
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        loop.train(config, run, progress=False)
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    loop.train(config, run, resume=True, progress=False)


def expected_scalars(run: Path) -> dict[str, dict[int, float]]:
    """name -> {step: value} from metrics.jsonl: every numeric value but `step`, the first one
    where a name repeats at a step (the logger's rule)."""
    out: dict[str, dict[int, float]] = {}
    for r in read_metrics(run / "metrics.jsonl"):
        for k, v in r.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                out.setdefault(k, {}).setdefault(r["step"], float(v))
    return out


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []
        self.closed = False

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.calls.append((step, scalars))

    def close(self) -> None:
        self.closed = True


def test_sinks_get_each_numeric_value_once_per_step(tmp_path):
    sink = Recorder()
    log = MetricsLogger(tmp_path / "metrics.jsonl", [sink])
    log.log({"step": 3, "tokens": 96, "train_loss": 2.5, "note": "text", "flag": True})
    log.log({"step": 3, "tokens": 96, "val_loss": 2.25, "wall_time": 1.5})
    log.log({"step": 6, "tokens": 192, "eval/mc/acc": 0.5})
    log.close()
    assert sink.calls == [(3, {"tokens": 96.0, "train_loss": 2.5}),
                          (3, {"val_loss": 2.25, "wall_time": 1.5}),
                          (6, {"tokens": 192.0, "eval/mc/acc": 0.5})]
    assert sink.closed and len(read_metrics(tmp_path / "metrics.jsonl")) == 3


def test_tensorboard_events_equal_metrics_jsonl_after_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard package reads the event files")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    crash_and_resume(sink_config(tmp_path, tensorboard=True), run, monkeypatch)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one a process
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected = expected_scalars(run)
    assert {"train_loss", "val_loss", "lr", "eval/toy_mc/acc"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(name)]
        # no step twice: the crashed process's points after step 8 were purged
        assert [s for s, _ in got] == sorted(points), name
        assert got == [(s, float(np.float32(v))) for s, v in sorted(points.items())], name


def _wandb_records(path: Path) -> list:
    """The protobuf records of a `.wandb` file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log records (crc32, length, type; FULL = 1, FIRST/MIDDLE/LAST = 2/3/4) in 32 KiB
    blocks."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + n > len(data):  # the end, or a record still being written
            break
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _history(path: Path) -> dict[int, dict[str, float]]:
    """step -> {name: value} of the history rows of a `.wandb` file (wandb's own keys left out)."""
    rows = {}
    for r in _wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): float(i.value_json)
                     for i in r.history.item}
            rows[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def _wait_for_history(path: Path, step: int) -> dict[int, dict[str, float]]:
    """The history of `path` once it reaches `step`: offline, `finish()` returns before W&B's
    service process has written the last records."""
    deadline = time.monotonic() + 60
    while max(history := _history(path), default=-1) < step and time.monotonic() < deadline:
        time.sleep(0.1)
    return history


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb package is not installed")
    for key, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path / "wandb-home")),
                       ("WANDB_SILENT", "true")):
        monkeypatch.setenv(key, value)
    (tmp_path / "wandb-home").mkdir()
    try:
        wandb.init(project="probe", dir=str(tmp_path / "wandb-home"), mode="offline",
                   reinit="create_new").finish()
    except Exception as e:  # no usable wandb service in this sandbox
        pytest.skip(f"wandb cannot start offline here: {e}")


def test_wandb_offline_run_holds_the_history_and_keeps_its_id_across_a_resume(
        tmp_path, monkeypatch, wandb_offline):
    run = tmp_path / "run"
    crash_and_resume(sink_config(tmp_path, wandb=True), run, monkeypatch)
    run_id = (run / "wandb" / "run-id.txt").read_text().strip()
    first, second = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))  # the same W&B run
    last = read_metrics(run / "metrics.jsonl")[-1]["step"]
    histories = [_wait_for_history(next(first.glob("run-*.wandb")), CRASH),
                 _wait_for_history(next(second.glob("run-*.wandb")), last)]
    assert max(histories[0]) == CRASH and min(histories[1]) == RESUMED_FROM + 1
    # the first process's points up to the checkpoint, then the resumed process's
    kept = {s: row for s, row in histories[0].items() if s <= RESUMED_FROM} | histories[1]
    logged: dict[str, dict[int, float]] = {}
    for step, row in kept.items():
        for name, value in row.items():
            logged.setdefault(name, {})[step] = value
    assert logged == expected_scalars(run)


@pytest.mark.parametrize(("setting", "module"), [("tensorboard", "torch.utils.tensorboard"),
                                                 ("wandb", "wandb")])
def test_a_missing_sink_package_names_the_extra_before_the_run_writes(
        tmp_path, monkeypatch, setting, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    config = sink_config(tmp_path, **{setting: True})
    with pytest.raises(ConfigError, match=rf"logging\.{setting} = true needs the .*"
                                          r"pip install 'lmforge\[track\]'"):
        loop.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_logging_settings_are_refused(tmp_path):
    config = sink_config(tmp_path).to_dict()
    config["logging"] = {"wandb": True, "wandb_mode": "cloud"}
    with pytest.raises(ConfigError, match=r"logging\.wandb_mode must be one of offline, online"):
        TrainConfig.from_dict(config)
