"""`lmforge scaling submit|wait|list` against the real service on a loopback port.

The service (`lmforge.scaling.service.app.create_app`) runs in a thread under uvicorn with one
CPU worker and trains real, tiny models on a synthetic token file (a repeated pattern, so the
validation loss must fall). `running_service` is shared with test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
uvicorn = pytest.importorskip("uvicorn")

from click.testing import CliRunner  # noqa: E402

from lmforge.cli import main  # noqa: E402

SEQ_LEN, VOCAB = 32, 64


def tiny_config(*, hidden: int = 32, layers: int = 1, batch: int = 4, steps: int = 8,
                n_evals: int = 4, lr: float = 3e-2, max_runtime: float = 120,
                seed: int = 0) -> dict[str, Any]:
    """A valid submission for the test service (seq_len 32, vocab 64): `steps` optimizer steps."""
    return {
        "architecture_config": {
            "hidden_size": hidden, "head_dim": 8, "num_attention_heads": hidden // 8,
            "num_key_value_heads": hidden // 8, "num_hidden_layers": layers,
            "intermediate_size": 2 * hidden, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "attention_bias": False,
            "dtype": "float32"},
        "optimizer_config": {
            "lr_scheduler": {"peak_value": lr, "final_lr_frac": 0.1, "warmup_frac": 0.0,
                             "init_value": 0.0},
            "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "eps_root": 0.0,
            "grad_clip_norm": 1.0},
        "train_batch_size": batch, "val_batch_size": 8, "n_evals": n_evals,
        "total_train_tokens": steps * batch * SEQ_LEN, "max_runtime_seconds": max_runtime,
        "model_seed": seed}


def write_tokens(path: Path, n: int, seed: int) -> None:
    """A learnable stream: a fixed 16-token cycle with 10% random substitutions."""
    rng = np.random.default_rng(seed)
    ids = np.tile(np.arange(16, dtype=np.uint16) * 3 % VOCAB, n // 16 + 1)[:n]
    noise = rng.random(n) < 0.1
    ids[noise] = rng.integers(0, VOCAB, noise.sum())
    ids[-1] = VOCAB - 1  # the vocabulary the service infers is max id + 1 = VOCAB
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ids)


@contextmanager
def running_service(data_dir: Path, budgets: dict[str, float], *, dispatcher: bool = True
                    ) -> Iterator[tuple[str, dict[str, str]]]:
    """The real service app on a free loopback port: (base URL, {user name: API key})."""
    from lmforge.scaling.service.app import create_app
    from lmforge.scaling.service.settings import ServiceSettings

    write_tokens(data_dir / "tok" / "train.npy", 1 << 15, 0)
    write_tokens(data_dir / "tok" / "val.npy", 1 << 11, 1)
    settings = ServiceSettings(
        data_dir=data_dir, train_tokens=str(data_dir / "tok" / "train.npy"),
        val_tokens_file=str(data_dir / "tok" / "val.npy"), seq_len=SEQ_LEN, val_tokens=512,
        workers=1, threads_per_worker=1, device="cpu", poll_s=0.1,
        start_dispatcher=dispatcher)
    app = create_app(settings)
    keys = {name: app.state.store.add_user(name, budget) for name, budget in budgets.items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", keys
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    with running_service(tmp_path_factory.mktemp("service"),
                         {"alice": 1000.0, "bob": 100.0}) as got:
        yield got


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["scaling", *args], env=env)


def test_submit_wait_list_and_export_records(service, tmp_path):
    from lmforge.model.accounting import count_parameters
    from lmforge.model.config import ModelConfig
    from lmforge.scaling.client import ServiceClient
    from lmforge.scaling.records import load_records

    url, keys = service
    env = {"LMFORGE_SERVICE_URL": url, "LMFORGE_SERVICE_KEY": keys["alice"]}
    config = tiny_config(max_runtime=100)
    (tmp_path / "exp.json").write_text(json.dumps(config))
    r = run("submit", str(tmp_path / "exp.json"), env=env)
    assert r.exit_code == 0, r.output
    eid = r.stdout.strip().splitlines()[0]
    # 100 s reserved out of 1000: the budget line says so
    assert "budget: 100 s used, 900 s remaining of 1000 s" in r.output

    r = run("wait", eid, "--poll", "0.2", "--timeout", "300", env=env)
    assert r.exit_code == 0, r.output
    assert f"{eid}: completed" in r.stdout
    assert "4/4" in r.stderr and "val_loss=" in r.stderr  # the progress bar
    with ServiceClient(url, keys["alice"]) as client:
        exp = client.experiment(eid)
        budget = client.budget()
    losses = exp["val_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "val_losses: " + " ".join(f"{v:.4f}" for v in losses) in r.stdout
    # charged the actual runtime clipped to [1 s, max] instead of the reservation
    assert 1 <= budget["used_seconds"] == exp["used_runtime_seconds"] <= 100

    r = run("list", env=env)
    assert r.exit_code == 0, r.output
    assert eid in r.stdout and "completed" in r.stdout and "4/4" in r.stdout
    assert f"{losses[-1]:.4f}" in r.stdout
    assert f"{round(budget['remaining_seconds'], 1):g} s remaining" in r.stdout

    r = run("list", "--json", env=env)
    assert r.exit_code == 0, r.output
    (tmp_path / "runs.json").write_text(r.stdout)
    [rec] = load_records(tmp_path / "runs.json")
    a = config["architecture_config"]
    n = count_parameters(ModelConfig(
        vocab_size=VOCAB, context_length=SEQ_LEN, d_model=a["hidden_size"],
        num_layers=a["num_hidden_layers"], num_heads=a["num_attention_heads"],
        d_ff=a["intermediate_size"]), embeddings=False)
    assert (rec.parameters, rec.tokens, rec.final_loss) == (n, 8 * 4 * SEQ_LEN, losses[-1])
    assert rec.compute == 6 * n * rec.tokens


def test_errors_are_one_line_with_the_servers_reason(service, tmp_path):
    url, keys = service
    config = tiny_config(hidden=16, max_runtime=60)
    (tmp_path / "a.json").write_text(json.dumps(config))
    flags = ["--url", url, "--key", keys["bob"]]
    r = run("submit", str(tmp_path / "a.json"), *flags)
    assert r.exit_code == 0, r.output
    # the same configuration again: 409 naming the first experiment, nothing reserved
    first = r.stdout.strip()
    r = run("submit", str(tmp_path / "a.json"), *flags)
    assert r.exit_code == 1 and "error: " in r.output and "HTTP 409" in r.output
    assert "Traceback" not in r.output
    # over budget: more than bob's whole budget of 100 s
    (tmp_path / "b.json").write_text(json.dumps(tiny_config(hidden=16, seed=1, max_runtime=150)))
    r = run("submit", str(tmp_path / "b.json"), *flags)
    assert r.exit_code == 1 and "HTTP 400" in r.output
    # validation: the field is named
    bad = tiny_config(n_evals=3)
    (tmp_path / "c.json").write_text(json.dumps(bad))
    r = run("submit", str(tmp_path / "c.json"), *flags)
    assert r.exit_code == 1 and "HTTP 422" in r.output and "n_evals" in r.output
    # another user's experiment is not found; a wrong key is refused
    r = run("wait", first, "--url", url, "--key", keys["alice"], "--no-progress")
    assert r.exit_code == 1 and "HTTP 404" in r.output
    r = run("list", "--url", url, "--key", "nobody.wrong")
    assert r.exit_code == 1 and "HTTP 401" in r.output and "X-API-Key" in r.output
    r = run("list", "--url", url, env={"LMFORGE_SERVICE_KEY": ""})
    assert r.exit_code == 1 and "LMFORGE_SERVICE_KEY" in r.output
    (tmp_path / "bad.toml").write_text("n_evals = \n")
    r = run("submit", str(tmp_path / "bad.toml"), *flags)
    assert r.exit_code == 1 and "bad.toml: not valid TOML" in r.output


def test_help_has_examples():
    for cmd in ("submit", "wait", "list"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.output  # parsed by tests/test_readme.py


def test_wait_exits_1_when_the_experiment_fails(service, tmp_path):
    url, keys = service
    # far more steps than 1 s allows: killed at max_runtime_seconds, charged in full
    config = tiny_config(hidden=16, steps=4096, n_evals=4, max_runtime=1, seed=7)
    (tmp_path / "slow.json").write_text(json.dumps(config))
    flags = ["--url", url, "--key", keys["alice"]]
    r = run("submit", str(tmp_path / "slow.json"), *flags)
    assert r.exit_code == 0, r.output
    eid = r.stdout.strip()
    r = run("wait", eid, "--poll", "0.2", "--timeout", "120", "--no-progress", *flags)
    assert r.exit_code == 1
    assert f"{eid}: failed in 1.0 s" in r.stdout
    assert f"error: experiment {eid} failed: timeout: " in r.stderr
