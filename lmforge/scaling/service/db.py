"""The service's database: users and hashed keys, experiments, final submissions, an event log.

SQLAlchemy 2.x over SQLite (a file in the data dir, the default) or any SQLAlchemy URL
(PostgreSQL: ``postgresql+psycopg://user@host/db``). `Store` is the only code that touches it.

Budget accounting, per user, in seconds of training wall time:

    used = Σ over the user's experiments (reserved_seconds + charged_seconds)
    queued / running:      reserved = max_runtime_seconds,  charged = 0
    completed:             reserved = 0, charged = clip(runtime, 1, max_runtime_seconds)
    failed (timeout):      reserved = 0, charged = max_runtime_seconds
    failed (unexpected):   reserved = 0, charged = clip(runtime, 1, max) (0 if it never ran)
    cancelled while queued: reserved = 0, charged = 0

A submit is one transaction holding the user's row locked — on SQLite every transaction is
``BEGIN IMMEDIATE`` (one writer at a time), on PostgreSQL ``SELECT ... FOR UPDATE`` on the user
— so that "used + max_runtime ≤ budget" and "no experiment with this config hash" are checked
and the reservation inserted without another submit in between: concurrent submits can never
over-spend, and a duplicate reserves nothing.

Keys: ``<key_id>.<secret>``; the row stores key_id and sha256(secret) (a random 32-byte secret
needs no slow hash), compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lmforge.errors import InvalidArgument, LmforgeError


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    budget_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class ExperimentRow(Base):
    __tablename__ = "experiments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|running|completed|failed
    failure: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    val_losses: Mapped[list] = mapped_column(JSON, default=list)
    max_runtime: Mapped[float] = mapped_column(Float)
    reserved_seconds: Mapped[float] = mapped_column(Float)
    charged_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    num_parameters: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    submitted_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class FinalSubmissionRow(Base):
    __tablename__ = "final_submissions"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    training_config: Mapped[dict] = mapped_column(JSON)
    predicted_final_loss: Mapped[float] = mapped_column(Float)
    submitted_at: Mapped[float] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    experiment_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Duplicate(LmforgeError):
    """The user already has an experiment with this configuration (`experiment_id`)."""

    def __init__(self, experiment_id: str):
        super().__init__(f"the same configuration was already submitted as experiment "
                         f"{experiment_id}; change a setting (e.g. model_seed) to run it again")
        self.experiment_id = experiment_id


class OverBudget(LmforgeError):
    """max_runtime_seconds is more than the user's remaining budget."""

    def __init__(self, requested: float, summary: dict[str, float]):
        super().__init__(f"max_runtime_seconds = {requested:g} exceeds the remaining budget of "
                         f"{summary['remaining_seconds']:g} s; lower max_runtime_seconds or wait "
                         "for running experiments to finish (unused reservations are refunded)")
        self.summary = summary


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` (see module)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 120})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=120000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """All reads and writes of the service (thread-safe: one short session per call)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def _log(self, s: Session, kind: str, user_id: int | None = None,
             experiment_id: str | None = None, **detail: Any) -> None:
        s.add(Event(time=time.time(), user_id=user_id, experiment_id=experiment_id, kind=kind,
                    detail=detail))

    # users -----------------------------------------------------------------------------------
    def add_user(self, name: str, budget_seconds: float) -> str:
        """Create user `name` with a budget; returns the API key (only its hash is stored)."""
        if not name.strip():
            raise InvalidArgument("the user name must not be empty")
        if not budget_seconds >= 0:
            raise InvalidArgument(f"--budget-seconds must be >= 0, got {budget_seconds}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.session() as s:
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise InvalidArgument(f"user {name!r} already exists; pick another name")
            user = User(name=name, key_id=key_id, key_hash=hash_secret(secret),
                        budget_seconds=float(budget_seconds), created_at=time.time())
            s.add(user)
            s.flush()
            self._log(s, "user_added", user.id, budget_seconds=budget_seconds)
        return f"{key_id}.{secret}"

    def authenticate(self, key: str | None) -> User | None:
        """The user holding `key`, or None (unknown key id or wrong secret)."""
        key_id, _, secret = (key or "").partition(".")
        if not key_id or not secret:
            return None
        with self.session() as s:
            user = s.scalar(select(User).where(User.key_id == key_id))
        expected = user.key_hash if user is not None else hash_secret("")
        ok = hmac.compare_digest(expected, hash_secret(secret))
        return user if user is not None and ok else None

    def users(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(User).order_by(User.id)).all()
            return [{"id": u.id, "name": u.name, "budget_seconds": u.budget_seconds,
                     **self._summary(s, u)} for u in rows]

    # budget ----------------------------------------------------------------------------------
    def _summary(self, s: Session, user: User) -> dict[str, float]:
        rows = s.execute(select(ExperimentRow.reserved_seconds, ExperimentRow.charged_seconds)
                         .where(ExperimentRow.user_id == user.id)).all()
        used = sum(r + c for r, c in rows)
        return {"used_seconds": used, "remaining_seconds": max(0.0, user.budget_seconds - used),
                "total_budget_seconds": user.budget_seconds}

    def budget(self, user_id: int) -> dict[str, float]:
        with self.session() as s:
            return self._summary(s, s.get_one(User, user_id))

    def submit(self, user_id: int, config: dict[str, Any], config_hash: str, max_runtime: float,
               num_parameters: int) -> tuple[str, dict[str, float]]:
        """Reserve `max_runtime` and queue the experiment, atomically (see the module).

        Raises `Duplicate` (an earlier experiment has `config_hash` and was not cancelled) or
        `OverBudget`; in both cases nothing is written.
        """
        with self.session() as s:
            user = s.scalar(select(User).where(User.id == user_id).with_for_update())
            assert user is not None
            earlier = s.scalar(select(ExperimentRow.id).where(
                ExperimentRow.user_id == user_id, ExperimentRow.config_hash == config_hash,
                ExperimentRow.failure.is_(None) | (ExperimentRow.failure != "cancelled")))
            if earlier is not None:
                raise Duplicate(earlier)
            summary = self._summary(s, user)
            if max_runtime > summary["remaining_seconds"] + 1e-9:
                raise OverBudget(max_runtime, summary)
            eid = uuid.uuid4().hex[:16]
            s.add(ExperimentRow(id=eid, user_id=user_id, config=config, config_hash=config_hash,
                                status="queued", val_losses=[], max_runtime=max_runtime,
                                reserved_seconds=max_runtime, charged_seconds=0.0,
                                num_parameters=num_parameters, attempts=0,
                                submitted_at=time.time()))
            s.flush()
            self._log(s, "submitted", user_id, eid, reserved=max_runtime)
            return eid, self._summary(s, user)

    # experiments -----------------------------------------------------------------------------
    def experiments(self, user_id: int | None = None) -> list[ExperimentRow]:
        """The user's experiments (all users' with None), newest first."""
        with self.session() as s:
            q = select(ExperimentRow).order_by(ExperimentRow.submitted_at.desc())
            if user_id is not None:
                q = q.where(ExperimentRow.user_id == user_id)
            return list(s.scalars(q).all())

    def experiment(self, experiment_id: str, user_id: int | None = None) -> ExperimentRow | None:
        """One experiment; None if it does not exist or belongs to another user."""
        with self.session() as s:
            row = s.get(ExperimentRow, experiment_id)
        return row if row is not None and user_id in (None, row.user_id) else None

    def claim_next(self) -> ExperimentRow | None:
        """The oldest queued experiment, now `running` (started_at set, attempts + 1)."""
        with self.session() as s:
            row = s.scalar(select(ExperimentRow).where(ExperimentRow.status == "queued")
                           .order_by(ExperimentRow.submitted_at).limit(1).with_for_update())
            if row is None:
                return None
            row.status, row.started_at, row.attempts = "running", time.time(), row.attempts + 1
            row.val_losses = []
            self._log(s, "started", row.user_id, row.id, attempt=row.attempts)
            return row

    def add_val_loss(self, experiment_id: str, loss: float) -> None:
        with self.session() as s:
            row = s.get_one(ExperimentRow, experiment_id)
            if row.status == "running":
                row.val_losses = [*row.val_losses, float(loss)]

    def finish(self, experiment_id: str, *, runtime: float, failure: str | None = None,
               error: str | None = None) -> None:
        """Record the end of a running experiment and turn its reservation into the charge."""
        with self.session() as s:
            row = s.get_one(ExperimentRow, experiment_id)
            if row.status != "running":
                return  # cancelled meanwhile: already settled
            if failure == "timeout":
                charge = row.max_runtime
            else:
                charge = min(max(runtime, 1.0), row.max_runtime)
            row.status = "failed" if failure else "completed"
            row.failure, row.error = failure, error
            row.reserved_seconds, row.charged_seconds = 0.0, charge
            row.completed_at = time.time()
            self._log(s, row.status, row.user_id, row.id, charged=charge, runtime=runtime,
                      failure=failure)

    def requeue_interrupted(self) -> list[str]:
        """Restart rule: experiments left `running` by a killed service go back to `queued`,
        keeping their reservation, with no charge for the lost attempt; returns their ids."""
        with self.session() as s:
            rows = s.scalars(select(ExperimentRow).where(ExperimentRow.status == "running")).all()
            for row in rows:
                row.status, row.started_at, row.val_losses = "queued", None, []
                self._log(s, "requeued", row.user_id, row.id, attempt=row.attempts,
                          reason="the service stopped while it ran")
            return [r.id for r in rows]

    def cancel(self, experiment_id: str) -> str:
        """Cancel a queued experiment (refunded in full); returns its previous status. A running
        one is stopped by the dispatcher (`cancel_requested`), charged like a finished one."""
        with self.session() as s:
            row = s.get(ExperimentRow, experiment_id)
            if row is None:
                raise InvalidArgument(f"no experiment {experiment_id!r}; see `lmforge scaling "
                                      "experiments list`")
            previous = row.status
            if previous == "queued":
                row.status, row.failure, row.error = "failed", "cancelled", "cancelled by admin"
                row.reserved_seconds, row.completed_at = 0.0, time.time()
            self._log(s, "cancel_requested" if previous == "running" else "cancelled",
                      row.user_id, row.id, previous=previous)
            return previous

    def cancel_requested(self) -> set[str]:
        """Running experiments an admin asked to cancel (their ids)."""
        with self.session() as s:
            ids = s.scalars(select(Event.experiment_id).where(Event.kind == "cancel_requested"))
            running = s.scalars(select(ExperimentRow.id).where(ExperimentRow.status == "running"))
            return {i for i in ids if i is not None} & set(running)

    def events(self, experiment_id: str | None = None) -> list[Event]:
        with self.session() as s:
            q = select(Event).order_by(Event.id)
            if experiment_id is not None:
                q = q.where(Event.experiment_id == experiment_id)
            return list(s.scalars(q).all())

    # final submission ------------------------------------------------------------------------
    def set_final(self, user_id: int, training_config: dict, loss: float) -> FinalSubmissionRow:
        """Store the user's final submission (replacing an earlier one)."""
        with self.session() as s:
            row = s.get(FinalSubmissionRow, user_id)
            if row is None:
                row = FinalSubmissionRow(user_id=user_id)
                s.add(row)
            row.training_config, row.predicted_final_loss = training_config, loss
            row.submitted_at = time.time()
            self._log(s, "final_submission", user_id, predicted_final_loss=loss)
            return row

    def final(self, user_id: int) -> FinalSubmissionRow | None:
        with self.session() as s:
            return s.get(FinalSubmissionRow, user_id)
