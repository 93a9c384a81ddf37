"""A Python client of the training-experiment service (`lmforge scaling serve`, issue 16).

It speaks the service's HTTP contract exactly as the CS336 course client does: plain JSON bodies,
the user's key in an ``X-API-Key`` header, nothing else. Every answer is returned as the JSON the
server sent (dicts and lists), so code written against the course's service works unchanged:

    client = ServiceClient("http://127.0.0.1:8000", "my-key")
    sub = client.submit(config)            # {"experiment_id": ..., "budget_summary": {...}}
    done = client.wait(sub["experiment_id"], poll_s=2.0)
    done["val_losses"]                     # e.g. [6.9, 5.1, 4.3, 3.8], one per evaluation

Errors the server answers with become `ServiceError` subclasses carrying the HTTP status and the
server's own message (``detail``), so the CLI prints e.g. ``error: the service refused the
request (HTTP 409): an identical configuration was already submitted ...``:
401 `Unauthorized`, 404 `NotFound`, 409 `Duplicate`, 400 `Refused` (over budget: its
``budget_summary`` is kept), 413 `Refused`, 422 `Invalid` (FastAPI's list of field errors is
flattened to ``field: message`` lines). An unreachable server is `Unreachable`.

`run_experiments` submits a batch and waits for all of it, reusing the experiments of
configurations submitted before (409), so a sweep driven through it resumes where it stopped.
`load_config` reads a submission from a JSON or TOML file; `export_experiments` wraps a list of
experiments as ``{"experiments": [...]}``, the export `lmforge.scaling.records.load_records`
reads (`lmforge scaling list --json > runs.json`).
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lmforge.errors import InputError, InvalidArgument, LmforgeError, PathNotFound

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, KEY_ENV = "LMFORGE_SERVICE_URL", "LMFORGE_SERVICE_KEY"
FINISHED = ("completed", "failed")
"""Statuses an experiment never leaves (``queued`` → ``running`` → one of these)."""


class ServiceError(LmforgeError):
    """The service answered with an error: ``status_code`` (HTTP) and its ``message``.

    ``detail`` is the server's ``detail`` field as sent (a string, a dict or FastAPI's list of
    field errors).
    """

    def __init__(self, status_code: int, message: str, detail: Any = None) -> None:
        super().__init__(f"the service refused the request (HTTP {status_code}): {message}")
        self.status_code, self.message, self.detail = status_code, message, detail


class Unauthorized(ServiceError):
    """401: the API key is missing or wrong."""


class NotFound(ServiceError):
    """404: no such experiment for this user (another user's experiments are not visible)."""


class Duplicate(ServiceError):
    """409: the same configuration was submitted before; nothing was reserved."""


class Refused(ServiceError):
    """400 (e.g. over budget; ``budget_summary`` holds the server's summary, if sent) or 413."""

    @property
    def budget_summary(self) -> dict[str, Any] | None:
        d = self.detail
        return d.get("budget_summary") if isinstance(d, dict) else None


class Invalid(ServiceError):
    """422: the request body failed validation; the message names each field."""


class Unreachable(LmforgeError):
    """The service could not be reached at all (not running, wrong URL, network down)."""


class WaitTimeout(LmforgeError, TimeoutError):
    """`ServiceClient.wait` gave up before the experiment finished (it keeps running)."""


_ERRORS: dict[int, type[ServiceError]] = {
    400: Refused, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Duplicate,
    413: Refused, 422: Invalid}


def error_message(detail: Any) -> str:
    """One readable line from a FastAPI ``detail`` (a string, a dict or a list of field errors).

    >>> error_message([{"loc": ["body", "n_evals"], "msg": "must be >= 1"}])
    'n_evals: must be >= 1'
    >>> error_message({"message": "over budget", "budget_summary": {"remaining_seconds": 5}})
    "over budget (budget: {'remaining_seconds': 5})"
    >>> error_message({"message": "already submitted as e1", "experiment_id": "e1"})
    'already submitted as e1'
    """
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path")]
                msg = str(item.get("msg", item))
                lines.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
            else:
                lines.append(str(item))
        return "; ".join(lines)
    if isinstance(detail, dict):
        msg = str(detail.get("message") or detail.get("error") or detail.get("detail") or "")
        budget = detail.get("budget_summary")
        extra = {k: v for k, v in detail.items()  # what the message does not say already
                 if k not in ("message", "error", "detail") and str(v) not in msg}
        rest = f"budget: {budget}" if budget is not None else json.dumps(extra) if extra else ""
        return f"{msg} ({rest})" if msg and rest else msg or rest
    return str(detail)


class ServiceClient:
    """The HTTP API of one service for one user.

    `base_url` is the service root (``http://host:port``); `api_key` the key
    ``lmforge scaling users add`` printed. `timeout` is per request, in seconds. `http` lets a
    caller pass its own ``httpx.Client`` (e.g. FastAPI's ``TestClient``); by default one is made
    and closed by `close` / the ``with`` block.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 http: httpx.Client | None = None) -> None:
        if not api_key:
            raise InvalidArgument(f"no API key for the service at {base_url}: pass --key or set "
                                  f"{KEY_ENV} (`lmforge scaling users add NAME` prints one)")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._own = http is None
        self._http = http or httpx.Client(timeout=timeout)

    @classmethod
    def from_env(cls, url: str | None = None, key: str | None = None, **kw: Any) -> ServiceClient:
        """A client for `url` / `key`, else ``$LMFORGE_SERVICE_URL`` / ``$LMFORGE_SERVICE_KEY``."""
        return cls(url or os.environ.get(URL_ENV) or DEFAULT_URL,
                   key or os.environ.get(KEY_ENV, ""), **kw)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request (JSON `body`, if any) and return the decoded JSON answer."""
        url = self.base_url + path
        try:
            r = self._http.request(method, url, json=body,
                                   headers={"X-API-Key": self.api_key})
        except httpx.TimeoutException:
            raise Unreachable(f"the experiment service at {self.base_url} did not answer "
                              f"{method} {path} in time; it may be overloaded, try again or "
                              "raise the client's timeout") from None
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach the experiment service at {self.base_url} ({e}); "
                              "start it with `lmforge scaling serve` or check --url / "
                              f"${URL_ENV}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except (ValueError, AttributeError):
                detail = r.text
            kind = _ERRORS.get(r.status_code, ServiceError)
            raise kind(r.status_code, error_message(detail) or r.reason_phrase, detail)
        return r.json()

    def submit(self, config: dict[str, Any]) -> dict[str, Any]:
        """POST /submit: queue one training run; ``{"experiment_id", "budget_summary"}``."""
        return self.request("POST", "/submit", config)

    def budget(self) -> dict[str, Any]:
        """GET /budget: ``{"used_seconds", "remaining_seconds", "total_budget_seconds"}``."""
        return self.request("GET", "/budget")

    def experiments(self) -> list[dict[str, Any]]:
        """GET /experiments: this user's experiments, oldest first as the server lists them."""
        got = self.request("GET", "/experiments")
        return list(got["experiments"] if isinstance(got, dict) else got)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """GET /experiment/{id}: one experiment (status, ``val_losses`` so far, charges)."""
        return self.request("GET", f"/experiment/{experiment_id}")

    def final_submission(self) -> dict[str, Any]:
        """GET /final_submission: the latest ``{training_config, predicted_final_loss}``."""
        return self.request("GET", "/final_submission")

    def submit_final(self, training_config: dict[str, Any],
                     predicted_final_loss: float) -> dict[str, Any]:
        """POST /final_submission; a later one replaces an earlier one."""
        return self.request("POST", "/final_submission", {
            "training_config": training_config, "predicted_final_loss": predicted_final_loss})

    def wait(self, experiment_id: str, *, poll_s: float = 2.0, timeout_s: float | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll `experiment_id` every `poll_s` seconds until it is completed or failed.

        `progress` is called with each polled experiment (the last one included). Returns the
        finished experiment; raises `WaitTimeout` after `timeout_s` seconds (None: no limit)
        while it is still queued or running (the run itself is not affected).
        """
        if poll_s <= 0:
            raise InvalidArgument(f"poll_s must be > 0 seconds, got {poll_s}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            exp = self.experiment(experiment_id)
            if progress is not None:
                progress(exp)
            if exp.get("status") in FINISHED:
                return exp
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise WaitTimeout(f"experiment {experiment_id} is still {exp.get('status')} "
                                  f"after {timeout_s} s; wait again later (it keeps running)")
            time.sleep(poll_s)


def run_experiments(client: ServiceClient, configs: list[dict[str, Any]], *,
                    poll_s: float = 2.0, timeout_s: float | None = None,
                    progress: Callable[[dict[str, Any]], None] | None = None
                    ) -> list[dict[str, Any]]:
    """Submit `configs` and wait for all of them; the finished experiments, in `configs` order.

    Resumable, for sweeps: a configuration the service has seen already (409) is not run
    again, its earlier experiment is used. Another refusal (over budget, invalid) raises before
    anything more is submitted; those already queued keep running. `timeout_s` bounds the
    whole call; `progress` sees every polled experiment.
    """
    ids = []
    for config in configs:
        try:
            ids.append(client.submit(config)["experiment_id"])
        except Duplicate as e:
            earlier = e.detail.get("experiment_id") if isinstance(e.detail, dict) else None
            if not earlier:
                raise
            ids.append(earlier)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    done = []
    for eid in ids:
        left = None if deadline is None else max(deadline - time.monotonic(), poll_s)
        done.append(client.wait(eid, poll_s=poll_s, timeout_s=left, progress=progress))
    return done


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a submission (the ``POST /submit`` body) from a ``.json`` or ``.toml`` file.

    TOML has no null, so a TOML file simply leaves optional fields out; the tables
    ``[architecture_config]`` and ``[optimizer_config.lr_scheduler]`` hold the nested parts.
    """
    path = Path(path)
    if not path.is_file():
        raise PathNotFound(f"{path} does not exist or is not a file; give a JSON or TOML "
                           "training configuration")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            config: Any = tomllib.loads(text)
        else:
            config = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); fix the file "
                         "or use a .toml one") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e}); fix the file") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: a training configuration is a JSON object (with "
                         "architecture_config, optimizer_config, ...), not "
                         f"{type(config).__name__}")
    return config


def export_experiments(experiments: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``{"experiments": [...]}`` document `lmforge.scaling.records.load_records` reads.

    >>> export_experiments([{"experiment_id": "a", "status": "completed"}])
    {'experiments': [{'experiment_id': 'a', 'status': 'completed'}]}
    """
    return {"experiments": list(experiments)}


def val_losses(experiment: dict[str, Any]) -> list[float]:
    """The validation losses an experiment reported so far, in order (nats per token).

    >>> val_losses({"val_losses": [5.0, 4.5]})
    [5.0, 4.5]
    >>> val_losses({"status": "queued"})
    []
    """
    out = []
    for v in experiment.get("val_losses") or ():
        out.append(float(v["loss"] if isinstance(v, dict) else v))
    return out


def training_config(experiment: dict[str, Any]) -> dict[str, Any]:
    """The configuration an experiment was submitted with ({} when the server omits it)."""
    for key in ("training_config", "config"):
        if isinstance(experiment.get(key), dict):
            return experiment[key]
    return {}
