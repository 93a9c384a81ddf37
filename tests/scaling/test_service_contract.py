"""THE contract test: a real HTTP client against `lmforge scaling serve` on loopback, running
real (tiny) trainings — submit, poll to completion, losses decreasing, the budget charged and
refunded as specified, 401/404/409/400/413/422, a timeout, and a kill -9 of the service while a
job runs followed by a restart (the documented rule: re-queued, charged once)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the service needs sqlalchemy (pip install .[service])")
httpx = pytest.importorskip("httpx", reason="the contract test needs httpx")

from click.testing import CliRunner  # noqa: E402

from lmforge.cli import main  # noqa: E402
from lmforge.scaling.service.settings import ServiceSettings, ensure_token_files  # noqa: E402

SEQ = 32


def config(steps: int, n_evals: int, max_runtime: float, seed: int = 0, lr: float = 3e-3) -> dict:
    return {"architecture_config": {"hidden_size": 32, "head_dim": 8, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "num_hidden_layers": 2,
                                    "intermediate_size": 64, "vocab_size": 300},
            "optimizer_config": {"lr_scheduler": {"peak_value": lr, "final_lr_frac": 0.1,
                                                  "warmup_frac": 0.1}},
            "train_batch_size": 8, "val_batch_size": 8, "n_evals": n_evals,
            "total_train_tokens": steps * SEQ * 8, "max_runtime_seconds": max_runtime,
            "model_seed": seed}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lmforge scaling serve` in a subprocess (so that it can be killed like a real one)."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port = data_dir, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "lmforge.cli", "scaling", "serve", "--data-dir",
               str(self.data_dir), "--workers", "1", "--threads", "1", "--seq-len", str(SEQ),
               "--val-tokens", "512", "--port", str(self.port)]
        self.log = open(self.data_dir / f"server-{time.time():.0f}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.data_dir / self.log.name).read_text()
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("the service did not start within 120 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(client, eid: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exp = client.get(f"/experiment/{eid}").json()
        if exp["status"] in statuses:
            return exp
        time.sleep(0.2)
    raise AssertionError(f"experiment {eid} never reached {statuses}: {exp}")


def add_user(data_dir: Path, name: str, budget: float) -> str:
    result = CliRunner().invoke(main, ["scaling", "users", "add", name, "--budget-seconds",
                                       str(budget), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def test_service_contract(tmp_path):
    data_dir = tmp_path / "service"
    ensure_token_files(ServiceSettings(data_dir), vocab_size=300, max_bytes=150_000)
    alice, bob = add_user(data_dir, "alice", 400), add_user(data_dir, "bob", 50)
    server = Server(data_dir)
    server.start()
    try:
        _contract(server, alice, bob)
    finally:
        server.stop()


def _contract(server: Server, alice: str, bob: str) -> None:
    a = httpx.Client(base_url=server.url, headers={"X-API-Key": alice}, timeout=30)
    b = httpx.Client(base_url=server.url, headers={"X-API-Key": bob}, timeout=30)
    anon = httpx.Client(base_url=server.url, timeout=30)
    # auth, docs, bad input
    assert anon.get("/budget").status_code == 401
    assert anon.get("/budget", headers={"X-API-Key": alice + "x"}).status_code == 401
    assert f"seq_len = {SEQ}" in anon.get("/openapi.json").json()["info"]["description"]
    assert anon.get("/docs").status_code == 200
    assert a.post("/submit", content=b"x" * 100_000,
                  headers={"Content-Type": "application/json"}).status_code == 413
    bad = config(16, 3, 60)
    r = a.post("/submit", json=bad)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "n_evals"]

    # A completes; D is a duplicate (nothing reserved); O asks for more than is left
    good = config(24, 4, 120)
    r = a.post("/submit", json=good)
    assert r.status_code == 200, r.text
    exp_a = r.json()["experiment_id"]
    assert r.json()["budget_summary"] == {"used_seconds": 120, "remaining_seconds": 280,
                                          "total_budget_seconds": 400}
    r = a.post("/submit", json=good)
    assert r.status_code == 409 and r.json()["detail"]["experiment_id"] == exp_a
    r = a.post("/submit", json=config(24, 4, 281, seed=1))
    assert r.status_code == 400 and r.json()["detail"]["budget_summary"]["used_seconds"] == 120
    assert b.get(f"/experiment/{exp_a}").status_code == 404
    assert b.get("/experiments").json() == {"experiments": []}

    # T cannot finish in 2 s: failed (timeout), charged in full, its partial losses kept
    exp_t = a.post("/submit", json=config(4000, 2000, 2, seed=2)).json()["experiment_id"]
    assert a.get("/budget").json()["used_seconds"] == 122

    done = wait_for(a, exp_a, ("completed", "failed"))
    assert done["status"] == "completed", done
    losses = done["val_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1
    assert 1 <= done["used_runtime_seconds"] <= 120 and done["completed_at"]
    timed_out = wait_for(a, exp_t, ("completed", "failed"))
    assert timed_out["status"] == "failed" and timed_out["failure"] == "timeout"
    assert timed_out["used_runtime_seconds"] == 2
    assert 1 <= len(timed_out["val_losses"]) < 2000
    charged = done["used_runtime_seconds"] + 2
    assert a.get("/budget").json()["used_seconds"] == pytest.approx(charged)  # A refunded

    # R runs when the service is killed; after the restart it is re-queued and charged once
    exp_r = a.post("/submit", json=config(96, 4, 200, seed=3)).json()["experiment_id"]
    wait_for(a, exp_r, ("running",))
    server.kill()
    server.start()
    assert a.get("/budget").json()["used_seconds"] == pytest.approx(charged + 200)  # kept
    rerun = wait_for(a, exp_r, ("completed", "failed"))
    assert rerun["status"] == "completed" and rerun["attempts"] == 2
    assert len(rerun["val_losses"]) == 4
    assert a.get("/budget").json()["used_seconds"] == pytest.approx(
        charged + rerun["used_runtime_seconds"])

    # final submission: the latest replaces the earlier one
    assert a.get("/final_submission").status_code == 404
    for loss in (3.5, 3.25):
        r = a.post("/final_submission", json={"training_config": good,
                                              "predicted_final_loss": loss})
        assert r.status_code == 200, r.text
    assert a.get("/final_submission").json()["predicted_final_loss"] == 3.25
    listed = {e["experiment_id"] for e in a.get("/experiments").json()["experiments"]}
    assert listed == {exp_a, exp_t, exp_r}


@pytest.mark.skipif(os.name != "posix", reason="kill -9 semantics")
def test_admin_cli_lists_and_cancels(tmp_path):
    from lmforge.scaling.service.db import Store

    data_dir = tmp_path / "svc"
    key = add_user(data_dir, "carol", 100)
    store = Store(ServiceSettings(data_dir).database_url)
    user = store.authenticate(key)
    eid, _ = store.submit(user.id, config(8, 2, 30), "h", 30.0, 1)
    runner = CliRunner()
    listed = runner.invoke(main, ["scaling", "experiments", "list", "--data-dir", str(data_dir)])
    assert listed.exit_code == 0 and eid in listed.output and "queued" in listed.output
    out = runner.invoke(main, ["scaling", "experiments", "cancel", eid, "--data-dir",
                               str(data_dir)])
    assert out.exit_code == 0 and "refunded" in out.output
    assert store.budget(user.id)["used_seconds"] == 0
    users = runner.invoke(main, ["scaling", "users", "list", "--data-dir", str(data_dir)])
    assert "carol" in users.output and "100" in users.output
