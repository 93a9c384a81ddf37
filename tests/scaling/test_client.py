"""The service client's wire format and error mapping, against a stand-in FastAPI app.

The stand-in answers exactly as the contract of issue 16 specifies (and as FastAPI formats
errors), and records each request, so these tests check what the client *sends* (plain JSON,
``X-API-Key``, the right method and path) and how it turns each answer into a result or an
error. The end-to-end tests against the real service are in test_cli_client.py and
test_dashboard_browser.py.
"""

from __future__ import annotations

import json

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi import FastAPI, Header, HTTPException, Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from lmforge.errors import InputError, InvalidArgument, LmforgeError  # noqa: E402
from lmforge.scaling import client as C  # noqa: E402

KEY = "k-123"


def fake_service(polls_until_done: int = 2):
    """A stand-in for the service: one user, one experiment that completes after N polls."""
    app = FastAPI()
    seen: list[dict] = []
    state = {"polls": 0, "final": None}

    def auth(key: str | None) -> None:
        if key != KEY:
            raise HTTPException(401, "missing or wrong X-API-Key")

    @app.middleware("http")
    async def record(request: Request, call_next):
        body = await request.body()
        seen.append({"method": request.method, "path": request.url.path,
                     "key": request.headers.get("x-api-key"),
                     "content_type": request.headers.get("content-type"),
                     "body": json.loads(body) if body else None})
        return await call_next(request)

    @app.post("/submit")
    def submit(body: dict, x_api_key: str | None = Header(None)):
        auth(x_api_key)
        if body.get("duplicate"):
            raise HTTPException(409, {"message": "the same configuration was submitted before",
                                      "experiment_id": "e0"})
        if body.get("max_runtime_seconds", 0) > 100:
            raise HTTPException(400, {"message": "max_runtime_seconds exceeds the remaining "
                                      "budget", "budget_summary": {"used_seconds": 10,
                                      "remaining_seconds": 90, "total_budget_seconds": 100}})
        if body.get("n_evals") == 0:
            raise HTTPException(422, [{"loc": ["body", "n_evals"], "msg": "Input should be "
                                       "greater than or equal to 1", "type": "greater_than_equal"}])
        return {"experiment_id": "e1", "budget_summary": {
            "used_seconds": 10 + body["max_runtime_seconds"],
            "remaining_seconds": 90 - body["max_runtime_seconds"], "total_budget_seconds": 100}}

    @app.get("/experiments")
    def experiments(x_api_key: str | None = Header(None)):
        auth(x_api_key)
        return {"experiments": [{"experiment_id": "e1", "status": "queued", "val_losses": []}]}

    @app.get("/experiment/{eid}")
    def experiment(eid: str, x_api_key: str | None = Header(None)):
        auth(x_api_key)
        if eid == "e0":  # submitted earlier (the 409 of a duplicate names it), finished
            return {"experiment_id": "e0", "status": "completed", "val_losses": [4.0, 3.0]}
        if eid != "e1":
            raise HTTPException(404, f"no experiment {eid}")
        state["polls"] += 1
        n = state["polls"]
        if n >= polls_until_done:
            return {"experiment_id": "e1", "status": "completed", "val_losses": [5.0, 4.0],
                    "used_runtime_seconds": 3.0}
        return {"experiment_id": "e1", "status": "running", "val_losses": [5.0][:n - 1]}

    @app.get("/budget")
    def budget(x_api_key: str | None = Header(None)):
        auth(x_api_key)
        return {"used_seconds": 10, "remaining_seconds": 90, "total_budget_seconds": 100}

    @app.post("/final_submission")
    def post_final(body: dict, x_api_key: str | None = Header(None)):
        auth(x_api_key)
        state["final"] = body
        return body

    @app.get("/final_submission")
    def get_final(x_api_key: str | None = Header(None)):
        auth(x_api_key)
        if state["final"] is None:
            raise HTTPException(404, "no final submission yet")
        return state["final"]

    return app, seen


@pytest.fixture
def service():
    app, seen = fake_service()
    with TestClient(app) as http:
        yield C.ServiceClient("http://testserver", KEY, http=http), seen, http


def test_submit_sends_plain_json_with_the_key_header(service):
    client, seen, _ = service
    config = {"max_runtime_seconds": 30, "n_evals": 2, "architecture_config": {"x": 1}}
    got = client.submit(config)
    assert got == {"experiment_id": "e1", "budget_summary": {
        "used_seconds": 40, "remaining_seconds": 60, "total_budget_seconds": 100}}
    req = seen[-1]
    assert (req["method"], req["path"], req["key"]) == ("POST", "/submit", KEY)
    assert req["content_type"] == "application/json"
    assert req["body"] == config  # the body is the configuration itself, unwrapped


def test_reads_return_the_servers_json(service):
    client, seen, _ = service
    assert client.budget()["remaining_seconds"] == 90
    assert [e["experiment_id"] for e in client.experiments()] == ["e1"]
    assert client.experiment("e1")["status"] == "running"
    assert [(r["method"], r["path"]) for r in seen] == [
        ("GET", "/budget"), ("GET", "/experiments"), ("GET", "/experiment/e1")]
    assert all(r["key"] == KEY for r in seen)


@pytest.mark.parametrize(("body", "kind", "status", "words"), [
    ({"duplicate": True, "max_runtime_seconds": 1}, C.Duplicate, 409, "submitted before"),
    ({"max_runtime_seconds": 500}, C.Refused, 400, "remaining budget"),
    ({"max_runtime_seconds": 1, "n_evals": 0}, C.Invalid, 422, "n_evals: Input should be"),
])
def test_submit_errors_carry_status_and_message(service, body, kind, status, words):
    client, _, _ = service
    with pytest.raises(kind) as e:
        client.submit(body)
    assert e.value.status_code == status
    assert words in e.value.message and f"HTTP {status}" in str(e.value)
    assert isinstance(e.value, LmforgeError)  # the CLI prints it as `error: ...`
    if kind is C.Refused:
        assert e.value.budget_summary == {"used_seconds": 10, "remaining_seconds": 90,
                                          "total_budget_seconds": 100}


def test_wrong_key_is_unauthorized_and_unknown_id_not_found(service):
    client, _, http = service
    with pytest.raises(C.Unauthorized) as e:
        C.ServiceClient("http://testserver", "wrong", http=http).budget()
    assert e.value.status_code == 401 and "X-API-Key" in e.value.message
    with pytest.raises(C.NotFound) as e:
        client.experiment("nope")
    assert e.value.status_code == 404 and "nope" in e.value.message
    with pytest.raises(InvalidArgument, match="LMFORGE_SERVICE_KEY"):
        C.ServiceClient("http://testserver", "")


def test_wait_polls_until_finished_and_reports_progress(service):
    client, seen, _ = service
    calls: list[tuple[str, list[float]]] = []
    exp = client.wait("e1", poll_s=0.01,
                      progress=lambda e: calls.append((e["status"], C.val_losses(e))))
    assert exp["status"] == "completed" and C.val_losses(exp) == [5.0, 4.0]
    assert calls == [("running", []), ("completed", [5.0, 4.0])]
    assert sum(r["path"] == "/experiment/e1" for r in seen) == 2


def test_wait_times_out_while_running():
    app, _ = fake_service(polls_until_done=10**6)
    with TestClient(app) as http, pytest.raises(C.WaitTimeout, match="still running"):
        C.ServiceClient("http://testserver", KEY, http=http).wait("e1", poll_s=0.01,
                                                                  timeout_s=0.05)


def test_final_submission_round_trip(service):
    client, seen, _ = service
    with pytest.raises(C.NotFound):
        client.final_submission()
    cfg = {"total_train_tokens": 1024}
    client.submit_final(cfg, 3.25)
    assert seen[-1]["body"] == {"training_config": cfg, "predicted_final_loss": 3.25}
    assert client.final_submission() == {"training_config": cfg, "predicted_final_loss": 3.25}


def test_unreachable_service_names_the_url():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with C.ServiceClient(f"http://127.0.0.1:{port}", KEY, timeout=2) as client, \
            pytest.raises(C.Unreachable, match=f"127.0.0.1:{port}.*lmforge scaling serve"):
        client.budget()


def test_load_config_reads_json_and_toml_alike(tmp_path):
    config = {"architecture_config": {"hidden_size": 64, "tie_word_embeddings": False},
              "optimizer_config": {"lr_scheduler": {"peak_value": 1e-3}},
              "n_evals": 4, "total_train_tokens": 8192}
    (tmp_path / "c.json").write_text(json.dumps(config))
    (tmp_path / "c.toml").write_text(
        "n_evals = 4\ntotal_train_tokens = 8192\n[architecture_config]\nhidden_size = 64\n"
        "tie_word_embeddings = false\n[optimizer_config.lr_scheduler]\npeak_value = 1e-3\n")
    assert C.load_config(tmp_path / "c.json") == config == C.load_config(tmp_path / "c.toml")
    (tmp_path / "bad.json").write_text('{"n_evals": 4,\n "x": }')
    with pytest.raises(InputError, match=r"bad.json:2:\d+: not valid JSON"):
        C.load_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        C.load_config(tmp_path / "list.json")


def test_run_experiments_reuses_duplicates_and_waits_for_all(service):
    client, seen, _ = service
    # the second configuration was run before: the service answers 409 naming e0
    done = C.run_experiments(client, [{"max_runtime_seconds": 5},
                                      {"max_runtime_seconds": 5, "duplicate": True}],
                             poll_s=0.01)
    assert [(e["experiment_id"], e["status"]) for e in done] == [("e1", "completed"),
                                                                  ("e0", "completed")]
    assert C.val_losses(done[1]) == [4.0, 3.0]
    assert [r["path"] for r in seen if r["method"] == "POST"] == ["/submit", "/submit"]
    # both submitted before the first poll
    assert [r["path"] for r in seen][:3] == ["/submit", "/submit", "/experiment/e1"]
    with pytest.raises(C.Refused):  # any other refusal stops the batch
        C.run_experiments(client, [{"max_runtime_seconds": 500}], poll_s=0.01)


def test_the_docs_example_configuration_is_accepted():
    """docs/scaling-service.md's experiment.json passes the service's own validation."""
    import re
    from pathlib import Path

    schemas = pytest.importorskip("lmforge.scaling.service.schemas")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scaling-service.md").read_text()
    [body] = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    config = schemas.TrainingConfig(**json.loads(body))
    assert schemas.check_against_service(config, 64, 1024) == []  # the CPU defaults
    assert schemas.check_against_service(config, 512, 1024) == []  # the course's seq_len
