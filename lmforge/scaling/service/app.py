"""The HTTP API (FastAPI): `create_app(settings)` → the app `lmforge scaling serve` runs.

Every endpoint but ``/docs``, ``/openapi.json`` and ``/dashboard`` needs the ``X-API-Key``
header (missing or wrong: 401). Status codes:

    200  ok                          401  missing / wrong key
    400  over budget (detail: {"message", "budget_summary"})
    404  unknown experiment, or another user's (indistinguishable on purpose)
    409  the same configuration again (detail: {"message", "experiment_id"}); nothing reserved
    413  request body over `settings.max_body_bytes`
    422  validation: FastAPI's list of errors, each naming the field (``loc``) and its rule

The app owns a `Store` (database) and, unless `settings.start_dispatcher` is False, a
`Dispatcher` whose worker slots train the queued experiments (started and stopped with the
app's lifespan). The service's training settings (seq_len, val_tokens) are in the OpenAPI
description at ``/docs`` and at ``GET /settings``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lmforge.scaling.service import schemas
from lmforge.scaling.service.db import Duplicate, ExperimentRow, OverBudget, Store, User
from lmforge.scaling.service.settings import ServiceSettings, data_vocab_size, ensure_token_files


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 (by Content-Length,
    and by counting what a chunked body actually sends)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or {}).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)
        await send({"type": "http.response.start", "status": 413,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _TooLarge(Exception):
    pass


def current_user(request: Request,
                 x_api_key: Annotated[str | None, Header()] = None) -> User:
    """The user whose key the request carries; 401 when it is missing or wrong."""
    user = request.app.state.store.authenticate(x_api_key)
    if user is None:
        raise HTTPException(401, "missing or wrong X-API-Key header",
                            headers={"WWW-Authenticate": "X-API-Key"})
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def experiment_out(row: ExperimentRow) -> schemas.Experiment:
    """The API view of a database row."""
    finished = row.status in ("completed", "failed")
    return schemas.Experiment(
        experiment_id=row.id, status=row.status, training_config=row.config,  # type: ignore[arg-type]
        val_losses=list(row.val_losses), reserved_seconds=row.reserved_seconds,
        used_runtime_seconds=row.charged_seconds if finished else None,
        failure=row.failure, error=row.error,  # type: ignore[arg-type]
        num_parameters=row.num_parameters, attempts=row.attempts,
        submitted_at=_iso(row.submitted_at) or "", started_at=_iso(row.started_at),
        completed_at=_iso(row.completed_at))


def create_app(settings: ServiceSettings, *, store: Store | None = None) -> FastAPI:
    """The service's FastAPI app (see the module docstring); `store` defaults to
    `Store(settings.database_url)`. Token files are made first if missing (`ensure_token_files`).
    """
    from lmforge.model.accounting import count_parameters
    from lmforge.scaling.service.job import to_model_config

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    train_path, val_path = ensure_token_files(settings)
    vocab = data_vocab_size(train_path)
    db = store or Store(settings.database_url)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.start_dispatcher:
            from lmforge.scaling.service.executors import make_slots
            from lmforge.scaling.service.scheduler import Dispatcher

            job_settings = {"seq_len": settings.seq_len, "val_tokens": settings.val_tokens,
                            "train_path": str(train_path), "val_path": str(val_path),
                            "device": settings.device}
            state["dispatcher"] = dispatcher = Dispatcher(
                db, lambda: make_slots(settings.executor, settings.workers, job_settings,
                                       address=settings.ray_address,
                                       threads_per_worker=settings.threads_per_worker),
                str(settings.runs_dir), settings.poll_s)
            dispatcher.start()
        yield
        if "dispatcher" in state:
            state["dispatcher"].stop()
        if store is None:
            db.close()

    description = (
        "A budgeted queue of real lmforge training runs (CS336-compatible API). Every request "
        "needs the `X-API-Key` header. Service settings every experiment shares: "
        f"**seq_len = {settings.seq_len}** tokens per sequence, **val_tokens = "
        f"{settings.val_tokens}** validation tokens per evaluation, token ids < {vocab} "
        f"(vocab_size must be at least {vocab}), max_runtime_seconds in [1, "
        f"{schemas.MAX_RUNTIME_S}]. Validation errors are HTTP 422, naming each field.")
    app = FastAPI(title="lmforge experiment service", description=description,
                  lifespan=lifespan)
    app.state.store, app.state.settings, app.state.data_vocab = db, settings, vocab
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    @app.post("/submit", response_model=schemas.SubmitResponse)
    def submit(config: schemas.TrainingConfig, user: CurrentUser) -> Any:
        errors = schemas.check_against_service(config, settings.seq_len, vocab)
        if errors:
            raise HTTPException(422, errors)
        n = count_parameters(to_model_config(config, settings.seq_len), embeddings=False)
        try:
            eid, summary = db.submit(user.id, config.model_dump(mode="json"),
                                     config.config_hash(), config.max_runtime_seconds, n)
        except Duplicate as e:
            raise HTTPException(409, {"message": str(e), "experiment_id": e.experiment_id}
                                ) from None
        except OverBudget as e:
            raise HTTPException(400, {"message": str(e), "budget_summary": e.summary}
                                ) from None
        return {"experiment_id": eid, "budget_summary": summary}

    @app.get("/budget", response_model=schemas.BudgetSummary)
    def budget(user: CurrentUser) -> Any:
        return db.budget(user.id)

    @app.get("/experiments", response_model=schemas.ExperimentList)
    def experiments(user: CurrentUser) -> Any:
        return {"experiments": [experiment_out(r) for r in db.experiments(user.id)]}

    @app.get("/experiment/{experiment_id}", response_model=schemas.Experiment)
    def experiment(experiment_id: str, user: CurrentUser) -> Any:
        row = db.experiment(experiment_id, user.id)
        if row is None:
            raise HTTPException(404, f"no experiment {experiment_id!r} for this key")
        return experiment_out(row)

    @app.post("/final_submission", response_model=schemas.FinalSubmissionOut)
    def post_final(body: schemas.FinalSubmission, user: CurrentUser) -> Any:
        row = db.set_final(user.id, body.training_config.model_dump(mode="json"),
                           body.predicted_final_loss)
        return _final_out(row)

    @app.get("/final_submission", response_model=schemas.FinalSubmissionOut)
    def get_final(user: CurrentUser) -> Any:
        row = db.final(user.id)
        if row is None:
            raise HTTPException(404, "no final submission yet; POST /final_submission first")
        return _final_out(row)

    @app.get("/settings")
    def public_settings(user: CurrentUser) -> dict[str, Any]:
        return {**settings.public(), "vocab_size": vocab}

    _add_dashboard(app)
    return app


def _final_out(row: Any) -> dict[str, Any]:
    return {"training_config": row.training_config,
            "predicted_final_loss": row.predicted_final_loss,
            "submitted_at": _iso(row.submitted_at)}


def _add_dashboard(app: FastAPI) -> None:
    from lmforge.scaling.service import dashboard

    app.include_router(dashboard.router)
