"""`lmforge scaling serve|users|experiments`: the experiment service's operator side.

    lmforge scaling serve --data-dir service/ --workers 2
    lmforge scaling users add alice --budget-seconds 3600 --data-dir service/
    lmforge scaling experiments list --data-dir service/

The logic is `lmforge.scaling.service` (app, database, scheduler); these commands parse, print
and start uvicorn.
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.cli import PATH, console

_DATA_DIR = click.option("--data-dir", type=PATH, default=Path("scaling-service"),
                         show_default=True,
                         help="The service's data directory (database, token files, runs).")
_DB = click.option("--db", "db_url", default="",
                   help="SQLAlchemy database URL (default: SQLite in --data-dir), e.g. "
                   "postgresql+psycopg://user@host/lmforge.")


def _check_data_dir(data_dir: Path) -> None:
    from lmforge.errors import InputError

    if data_dir.exists() and not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} is a file; give a directory for the service's "
                         "database, token files and runs")


def _store(data_dir: Path, db_url: str, *, create: bool = False):
    """The service's database; `create`: make the data dir and SQLite file if missing (adding
    a user), else a missing one is an error (listing or cancelling creates nothing)."""
    from lmforge.errors import PathNotFound
    from lmforge.scaling.service.db import Store
    from lmforge.scaling.service.settings import ServiceSettings

    _check_data_dir(data_dir)
    if not db_url and not create and not (data_dir / "service.db").is_file():
        raise PathNotFound(f"no experiment service database in {data_dir}/ (service.db); "
                           "add a user with `lmforge scaling users add NAME --budget-seconds S "
                           f"--data-dir {data_dir}` or pass the --data-dir the service uses")
    data_dir.mkdir(parents=True, exist_ok=True)
    return Store(ServiceSettings(data_dir, db_url=db_url).database_url)


@click.command("serve")
@_DATA_DIR
@_DB
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker slots (jobs at a time); 0: one per GPU, else 1.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="local worker processes, or actors on a Ray cluster.")
@click.option("--address", default="", help="Ray cluster address (--executor ray); "
              "empty: start a local Ray instance.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 exposes the service to the network).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=2), default=64, show_default=True,
              help="Tokens per training sequence, for every experiment (the course: 512).")
@click.option("--val-tokens", type=click.IntRange(min=1), default=2**14, show_default=True,
              help="Validation tokens per evaluation (the course: 262144).")
@click.option("--train-tokens", "train_tokens", type=PATH, default=None,
              help="Training token file (.npy); default: data/small_en.txt tokenised once.")
@click.option("--val-tokens-file", type=PATH, default=None,
              help="Validation token file (.npy), with --train-tokens.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch CPU threads per job; 0: the cores split between the workers.")
def serve(data_dir: Path, db_url: str, workers: int, executor: str, address: str, host: str,
          port: int, seq_len: int, val_tokens: int, train_tokens: Path | None,
          val_tokens_file: Path | None, threads: int) -> None:
    """Run the experiment service: the HTTP API, the queue and its workers.

    Experiments left running by a killed service are re-queued at start (no charge for the lost
    attempt). Add users with `lmforge scaling users add`.

    \b
    Example:
      lmforge scaling serve --data-dir scaling-service --workers 1 --port 8000
    """
    import uvicorn

    from lmforge.errors import InvalidArgument
    from lmforge.scaling.service.app import create_app
    from lmforge.scaling.service.settings import ServiceSettings

    if (train_tokens is None) != (val_tokens_file is None):
        raise InvalidArgument("give both --train-tokens and --val-tokens-file, or neither")
    _check_data_dir(data_dir)
    settings = ServiceSettings(
        data_dir, db_url=db_url, workers=workers, executor=executor, ray_address=address,
        seq_len=seq_len, val_tokens=val_tokens, train_tokens=str(train_tokens or ""),
        val_tokens_file=str(val_tokens_file or ""), threads_per_worker=threads)
    app = create_app(settings)
    console.print(f"experiment service on http://{host}:{port} (docs: /docs, dashboard: "
                  f"/dashboard), data in {data_dir}, {executor} executor")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.group("users")
def users() -> None:
    """Add and list the service's users (each has an API key and a budget in seconds).

    \b
    Example:
      lmforge scaling users add alice --budget-seconds 3600 --data-dir scaling-service
    """


@users.command("add")
@click.argument("name")
@click.option("--budget-seconds", type=click.FloatRange(min=0), required=True,
              help="Training seconds this user may spend (reserved per experiment).")
@_DATA_DIR
@_DB
def users_add(name: str, budget_seconds: float, data_dir: Path, db_url: str) -> None:
    """Add a user and print their API key (shown only this once: only its hash is stored).

    \b
    Example:
      lmforge scaling users add alice --budget-seconds 3600 --data-dir scaling-service
    """
    key = _store(data_dir, db_url, create=True).add_user(name, budget_seconds)
    console.print(f"added {name} with {budget_seconds:g} s; API key (shown once):")
    click.echo(key)


@users.command("list")
@_DATA_DIR
@_DB
def users_list(data_dir: Path, db_url: str) -> None:
    """List users with their budgets: total, used (charged + reserved) and remaining seconds.

    \b
    Example:
      lmforge scaling users list --data-dir scaling-service
    """
    from rich.table import Table

    table = Table("user", "budget s", "used s", "remaining s")
    for u in _store(data_dir, db_url).users():
        table.add_row(u["name"], f"{u['total_budget_seconds']:g}", f"{u['used_seconds']:.1f}",
                      f"{u['remaining_seconds']:.1f}")
    console.print(table)


@click.group("experiments")
def experiments() -> None:
    """List and cancel experiments of all users (the operator's view).

    \b
    Example:
      lmforge scaling experiments list --data-dir scaling-service
    """


@experiments.command("list")
@_DATA_DIR
@_DB
def experiments_list(data_dir: Path, db_url: str) -> None:
    """List every experiment, newest first: id, user, status, losses, seconds charged/reserved.

    \b
    Example:
      lmforge scaling experiments list --data-dir scaling-service
    """
    from rich.table import Column, Table

    store = _store(data_dir, db_url)
    names = {u["id"]: u["name"] for u in store.users()}
    table = Table("user", "status", "evals", "last val loss", "charged s", "reserved s")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=16))
    for e in store.experiments():
        last = f"{e.val_losses[-1]:.4f}" if e.val_losses else ""
        status = f"{e.status} ({e.failure})" if e.failure else e.status
        table.add_row(e.id, names.get(e.user_id, str(e.user_id)), status,
                      f"{len(e.val_losses)}/{e.config['n_evals']}", last,
                      f"{e.charged_seconds:.1f}", f"{e.reserved_seconds:.1f}")
    console.print(table)


@experiments.command("cancel")
@click.argument("experiment_id")
@_DATA_DIR
@_DB
def experiments_cancel(experiment_id: str, data_dir: Path, db_url: str) -> None:
    """Cancel an experiment: a queued one is refunded in full; a running one is stopped by the
    service within a second and charged its runtime so far.

    \b
    Example:
      lmforge scaling experiments cancel 3f2a9c0d1e2b4a5c --data-dir scaling-service
    """
    previous = _store(data_dir, db_url).cancel(experiment_id)
    if previous == "queued":
        console.print(f"cancelled {experiment_id} (was queued; its reservation is refunded)")
    elif previous == "running":
        console.print(f"asked the service to stop {experiment_id} (running)")
    else:
        console.print(f"{experiment_id} had already finished ({previous}); nothing to cancel")


COMMANDS: list[click.Command] = [serve, users, experiments]
