"""The experiment service's rules without training: schemas, the config mapping, the LR schedule
against optax's formula, SGD against torch.optim.SGD, keys, and the budget under concurrency
(SQLite, and a real PostgreSQL server when initdb/pg_ctl are installed)."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sqlalchemy", reason="the service needs sqlalchemy (pip install .[service])")
pytest.importorskip("fastapi", reason="the service needs fastapi (pip install .[service])")

from pydantic import ValidationError

from lmforge.scaling.service.db import Duplicate, OverBudget, Store
from lmforge.scaling.service.job import to_train_config
from lmforge.scaling.service.schemas import TrainingConfig, check_against_service
from lmforge.train.optim import SGD, get_lr_cosine_schedule


def body(**over) -> dict:
    b = {"architecture_config": {"hidden_size": 32, "head_dim": 8, "num_attention_heads": 4,
                                 "num_key_value_heads": 2, "num_hidden_layers": 2,
                                 "intermediate_size": 64, "vocab_size": 300},
         "optimizer_config": {"lr_scheduler": {"peak_value": 3e-3, "final_lr_frac": 0.1,
                                               "warmup_frac": 0.25, "init_value": 1e-4}},
         "train_batch_size": 4, "n_evals": 2, "total_train_tokens": 32 * 4 * 8,
         "max_runtime_seconds": 2}
    for k, v in over.items():
        if k in b["architecture_config"] or k in ("attention_bias", "dtype", "rms_norm_eps"):
            b["architecture_config"][k] = v
        else:
            b[k] = v
    return b


@pytest.mark.parametrize("over, field", [
    ({"head_dim": 7}, "hidden_size"), ({"head_dim": 5, "hidden_size": 20}, "head_dim"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"), ({"attention_bias": True},
                                                          "attention_bias"),
    ({"dtype": "float16"}, "dtype"), ({"max_runtime_seconds": 43201}, "max_runtime_seconds"),
    ({"max_runtime_seconds": 0.5}, "max_runtime_seconds"), ({"n_evals": 0}, "n_evals"),
    ({"bogus": 1}, "bogus")])
def test_schema_refuses_naming_the_field(over, field):
    with pytest.raises(ValidationError) as e:
        TrainingConfig(**body(**over))
    assert field in str(e.value)


def test_service_rules_name_field_and_range():
    ok = TrainingConfig(**body())
    assert check_against_service(ok, 32, 300) == []
    errors = check_against_service(TrainingConfig(**body(total_train_tokens=1000)), 32, 300)
    assert errors[0]["loc"] == ["body", "total_train_tokens"] and "32 · 4 = 128" in \
        errors[0]["msg"]
    errors = check_against_service(TrainingConfig(**body(n_evals=3)), 32, 300)
    assert errors[0]["loc"] == ["body", "n_evals"]
    errors = check_against_service(ok, 32, 301)
    assert errors[0]["loc"][-1] == "vocab_size" and "301" in errors[0]["msg"]


def test_config_hash_is_canonical():
    a = TrainingConfig(**body())
    b = TrainingConfig(**json.loads(json.dumps(body(), sort_keys=True)))  # other key order
    explicit = body()
    explicit["model_seed"] = 0  # the default, spelled out
    assert a.config_hash() == b.config_hash() == TrainingConfig(**explicit).config_hash()
    assert a.config_hash() != TrainingConfig(**body(model_seed=1)).config_hash()


def test_schedule_matches_optax_warmup_cosine():
    """optax.warmup_cosine_decay_schedule(init, peak, warmup, decay_steps=steps, end), by hand."""
    t = to_train_config(TrainingConfig(**body()), seq_len=32, val_tokens=64, train_path="t",
                        val_path="v")
    o, steps = t.optim, t.train.max_steps
    init, peak, end, warm = 1e-4, 3e-3, 3e-4, 2
    assert (steps, o.warmup_iters, o.cosine_cycle_iters) == (8, warm, 8)
    for it in range(steps + 1):
        if it < warm:
            want = init + (peak - init) * it / warm
        else:
            want = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (it - warm) / (steps - warm)))
        got = get_lr_cosine_schedule(it, o.lr, o.min_lr, o.warmup_iters, o.cosine_cycle_iters,
                                     init_lr=o.init_lr)
        assert got == pytest.approx(want, rel=1e-12)
    m = t.model
    assert (m.d_model, m.num_heads, m.kv_heads, m.d_ff, m.context_length) == (32, 4, 2, 64, 32)


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 0.01)])
def test_sgd_equals_torch(momentum, wd):
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = SGD([ours], lr=0.1, momentum=momentum, weight_decay=wd)
    ropt = torch.optim.SGD([ref], lr=0.1, momentum=momentum, weight_decay=wd)
    for _ in range(4):
        g = torch.randn(5, 3)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ropt.step()
    torch.testing.assert_close(ours.detach(), ref.detach())


def test_keys_are_hashed_and_checked(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.add_user("alice", 10)
    assert store.authenticate(key).name == "alice"
    for bad in (None, "", key + "x", key.split(".")[0], "nokey.secret"):
        assert store.authenticate(bad) is None
    raw = (tmp_path / "db.sqlite").read_bytes()
    assert key.split(".")[1].encode() not in raw  # only the hash is stored


def _concurrent_submits(store: Store, n: int = 120) -> None:
    """n threads submit at once against a budget of 25 s with 2 s each: exactly 12 fit; 10 of
    the threads send one same config, which is accepted at most once."""
    key = store.add_user("u", 25)
    user = store.authenticate(key)
    barrier = threading.Barrier(n)

    def one(i: int) -> str:
        cfg = TrainingConfig(**body(model_seed=0 if i < 10 else i))
        barrier.wait()
        try:
            store.submit(user.id, cfg.model_dump(mode="json"), cfg.config_hash(), 2.0, 1)
            return "ok"
        except Duplicate:
            return "duplicate"
        except OverBudget:
            return "over"

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    accepted = results.count("ok")
    assert accepted == 12 and accepted * 2.0 <= 25
    rows = store.experiments(user.id)
    assert len(rows) == 12 and len({r.config_hash for r in rows}) == 12
    assert store.budget(user.id) == {"used_seconds": 24.0, "remaining_seconds": 1.0,
                                     "total_budget_seconds": 25.0}
    assert sum(1 for e in store.events() if e.kind == "submitted") == 12


def test_concurrent_submits_sqlite(tmp_path):
    _concurrent_submits(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server in a temp dir (as the `postgres` user when run as root)."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (pip install psycopg)")
    # Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<version>/bin.
    path = os.pathsep.join([os.environ.get("PATH", ""),
                            *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)])
    initdb, pg_ctl = shutil.which("initdb", path=path), shutil.which("pg_ctl", path=path)
    if not (initdb and pg_ctl):
        pytest.skip("initdb/pg_ctl not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="lmforge-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_concurrent_submits_postgres(postgres_url):
    store = Store(postgres_url)
    try:
        _concurrent_submits(store)
    finally:
        store.close()


def test_concurrent_http_submits_on_a_live_server(tmp_path):
    """The same rule through HTTP: 100 simultaneous POST /submit on a loopback uvicorn."""
    import httpx
    import uvicorn

    from lmforge.scaling.service.app import create_app
    from lmforge.scaling.service.settings import ServiceSettings

    np.save(tmp_path / "train.npy", np.arange(4096, dtype=np.uint16) % 300)
    np.save(tmp_path / "val.npy", np.arange(512, dtype=np.uint16) % 300)
    settings = ServiceSettings(tmp_path, seq_len=32, train_tokens=str(tmp_path / "train.npy"),
                               val_tokens_file=str(tmp_path / "val.npy"), start_dispatcher=False)
    app = create_app(settings)
    key = app.state.store.add_user("u", 30)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=100)) as c:
            def one(i: int) -> int:
                return c.post("/submit", json=body(model_seed=i, max_runtime_seconds=3),
                              headers={"X-API-Key": key}).status_code

            with ThreadPoolExecutor(100) as pool:
                codes = list(pool.map(one, range(100)))
            assert codes.count(200) == 10 and codes.count(400) == 90
            assert c.get("/budget", headers={"X-API-Key": key}).json()["used_seconds"] == 30
            assert c.get("/budget").status_code == 401
    finally:
        server.should_exit = True
        thread.join(timeout=10)
