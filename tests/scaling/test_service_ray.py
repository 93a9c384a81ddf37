"""The Ray executor: the dispatcher runs a real experiment on a Ray actor of a local Ray
instance (the same path as `lmforge scaling serve --executor ray --address ...`), streams its
losses into the database, and kills a job past its max_runtime_seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the service needs sqlalchemy (pip install .[service])")
ray = pytest.importorskip("ray", reason="the Ray executor needs ray (pip install .[ray])")

from lmforge.scaling.service.db import Store  # noqa: E402
from lmforge.scaling.service.executors import make_slots  # noqa: E402
from lmforge.scaling.service.scheduler import Dispatcher  # noqa: E402
from lmforge.scaling.service.schemas import TrainingConfig  # noqa: E402
from lmforge.scaling.service.settings import ServiceSettings, ensure_token_files  # noqa: E402
from tests.fresh_process import in_fresh_process  # noqa: E402
from tests.scaling.test_service_contract import SEQ, config  # noqa: E402


def test_ray_executor_runs_and_times_out(tmp_path):
    # In its own process: Ray leaves threads and a SIGTERM handler behind (tests/fresh_process.py).
    in_fresh_process(_serve_two_experiments_on_ray, tmp_path)


def _serve_two_experiments_on_ray(tmp_path: Path) -> None:
    settings = ServiceSettings(tmp_path)
    train, val = ensure_token_files(settings, vocab_size=300, max_bytes=100_000)
    store = Store(settings.database_url)
    user = store.authenticate(store.add_user("u", 1000))
    ids = []
    for cfg in (config(16, 2, 200), config(4000, 2000, 2, seed=1)):
        c = TrainingConfig(**cfg)
        ids.append(store.submit(user.id, c.model_dump(mode="json"), c.config_hash(),
                                c.max_runtime_seconds, 1)[0])
    job = {"seq_len": SEQ, "val_tokens": 256, "train_path": str(train), "val_path": str(val),
           "device": "cpu"}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        dispatcher = Dispatcher(store, lambda: make_slots("ray", 1, job, threads_per_worker=1),
                                str(settings.runs_dir), poll_s=0.2)
        dispatcher.start()
        deadline = time.monotonic() + 420  # a loaded 2-core machine starts actors slowly
        while time.monotonic() < deadline:
            rows = [store.experiment(i) for i in ids]
            if all(r.status in ("completed", "failed") for r in rows):
                break
            time.sleep(0.3)
        dispatcher.stop()
    finally:
        ray.shutdown()
    done, timed_out = (store.experiment(i) for i in ids)
    assert done.status == "completed" and len(done.val_losses) == 2, done.error
    assert done.val_losses[1] < done.val_losses[0]
    assert timed_out.status == "failed" and timed_out.failure == "timeout"
    assert timed_out.charged_seconds == 2
    assert store.budget(user.id)["used_seconds"] == done.charged_seconds + 2
