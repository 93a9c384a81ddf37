"""`lmforge scaling submit|wait|list`: the client side of the experiment service's HTTP API.

Thin wrappers around `lmforge.scaling.client.ServiceClient`: they parse, show progress and
print. The service is `--url` (default ``$LMFORGE_SERVICE_URL``, else http://127.0.0.1:8000) and
the key `--key` (default ``$LMFORGE_SERVICE_KEY``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lmforge.cli import UserError, console

_url = click.option("--url", default=None, metavar="URL",
                    help="The service root [default: $LMFORGE_SERVICE_URL or "
                    "http://127.0.0.1:8000].")
_key = click.option("--key", default=None, metavar="KEY",
                    help="Your API key [default: $LMFORGE_SERVICE_KEY].")


def _client(url: str | None, key: str | None) -> Any:
    from lmforge.scaling.client import ServiceClient

    return ServiceClient.from_env(url, key)


def _budget_line(b: dict[str, Any]) -> str:
    used, left, total = (round(b[k], 1) for k in ("used_seconds", "remaining_seconds",
                                                   "total_budget_seconds"))
    return f"budget: {used:g} s used, {left:g} s remaining of {total:g} s"


@click.command("submit")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_url
@_key
def submit(config: Path, url: str | None, key: str | None) -> None:
    """Submit a training configuration (JSON or TOML) to the experiment service.

    Prints the experiment id (on its own line, for scripts) and the budget after the
    reservation: a queued or running experiment reserves its whole max_runtime_seconds.

    \b
    Examples:
      export LMFORGE_SERVICE_KEY=...   # printed by `lmforge scaling users add NAME`
      lmforge scaling submit experiment.json --url http://127.0.0.1:8000
    """
    from lmforge.scaling.client import load_config

    body = load_config(config)
    with _client(url, key) as client:
        got = client.submit(body)
    click.echo(got["experiment_id"])
    if "budget_summary" in got:
        click.echo(_budget_line(got["budget_summary"]), err=True)


@click.command("wait")
@click.argument("experiment_id")
@click.option("--poll", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between polls.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Give up after this many seconds (the experiment keeps running).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (on stderr).")
@_url
@_key
def wait(experiment_id: str, poll: float, timeout: float | None, progress: bool,
         url: str | None, key: str | None) -> None:
    """Wait for an experiment to finish, showing its validation losses as they come.

    Prints the final status and the losses (one per evaluation); exits with status 1 when the
    experiment failed (timeout or an unexpected error).

    \b
    Examples:
      lmforge scaling wait 3f2c9a --poll 5 --timeout 3600
    """
    from tqdm import tqdm

    from lmforge.scaling.client import training_config, val_losses

    bar: Any = None

    def show(exp: dict[str, Any]) -> None:
        nonlocal bar
        if not progress:
            return
        if bar is None:
            total = training_config(exp).get("n_evals")
            bar = tqdm(total=total if isinstance(total, int) else None, unit="eval",
                       desc=f"{experiment_id} {exp.get('status')}", leave=True)
        losses = val_losses(exp)
        bar.set_description(f"{experiment_id} {exp.get('status')}")
        if losses:
            bar.set_postfix(val_loss=f"{losses[-1]:.4f}")
        bar.update(len(losses) - bar.n)

    with _client(url, key) as client:
        try:
            exp = client.wait(experiment_id, poll_s=poll, timeout_s=timeout, progress=show)
        finally:
            if bar is not None:
                bar.close()
    losses = val_losses(exp)
    click.echo(f"{experiment_id}: {exp['status']}"
               + (f" in {exp['used_runtime_seconds']:.1f} s"
                  if exp.get("used_runtime_seconds") is not None else ""))
    if losses:
        click.echo("val_losses: " + " ".join(f"{v:.4f}" for v in losses))
    if exp["status"] == "failed":
        reason = ": ".join(str(exp[k]) for k in ("failure", "error") if exp.get(k))
        raise UserError(f"experiment {experiment_id} failed"
                        + (f": {reason}" if reason else ""))


@click.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print {\"experiments\": [...]} as JSON instead (what `lmforge scaling fit` "
              "reads as records).")
@_url
@_key
def list_(as_json: bool, url: str | None, key: str | None) -> None:
    """List your experiments on the service and your budget.

    `--json` prints them as the export the scaling fits read as records:
    `lmforge scaling list --json > runs.json`, then `lmforge scaling fit runs.json`.

    \b
    Examples:
      lmforge scaling list
      lmforge scaling list --json --url http://127.0.0.1:8000
    """
    from rich.table import Table

    from lmforge.scaling.client import export_experiments, training_config, val_losses

    with _client(url, key) as client:
        experiments = client.experiments()
        budget = None if as_json else client.budget()
    if as_json:
        click.echo(json.dumps(export_experiments(experiments), indent=1))
        return
    table = Table(title="experiments (N: non-embedding parameters, D: training tokens)")
    for col in ("id", "status", "d×L", "N", "D", "evals", "val loss", "time s"):
        left = col in ("id", "status")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for exp in experiments:
        cfg = training_config(exp)
        arch = cfg.get("architecture_config", {})
        losses = val_losses(exp)
        runtime = exp.get("used_runtime_seconds")
        table.add_row(
            str(exp.get("experiment_id")), str(exp.get("status")),
            f"{arch.get('hidden_size', '?')}×{arch.get('num_hidden_layers', '?')}",
            f"{exp['num_parameters']:,}" if exp.get("num_parameters") else "?",
            f"{cfg['total_train_tokens']:,}" if "total_train_tokens" in cfg else "?",
            f"{len(losses)}/{cfg.get('n_evals', '?')}",
            f"{losses[-1]:.4f}" if losses else "-",
            f"{runtime:.1f}" if runtime is not None else "-")
    console.print(table)
    assert budget is not None
    console.print(_budget_line(budget))


COMMANDS: list[click.Command] = [submit, wait, list_]
