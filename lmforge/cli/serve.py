"""`lmforge serve RUN_DIR`: the OpenAI-compatible HTTP server (`lmforge.infer.server`).

    lmforge serve runs/demo --port 8000 --max-batch 16
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.cli import COUNT, PATH, UserError, console, main


@main.command("serve")
@click.argument("run_dir", type=PATH)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=COUNT, default=16, show_default=True,
              help="Requests decoded together at most (the rest wait their turn).")
@click.option("--model-name", help="Name clients pass as `model` (default: the run dir's name).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
def serve(run_dir: Path, host: str, port: int, max_batch: int, model_name: str | None,
          device: str) -> None:
    """Serve a trained run over an OpenAI-compatible HTTP API (continuous batching).

    Endpoints: /v1/completions, /v1/chat/completions, /v1/models, /health; "stream": true
    answers with server-sent events. Stop with Ctrl-C.

    \b
    Example:
      lmforge serve runs/demo --port 8000
      curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"prompt": "Alice was", "max_tokens": 30, "temperature": 0}'
    """
    import uvicorn

    from lmforge.infer.engine import Engine
    from lmforge.infer.server import create_app
    from lmforge.train.run_dir import load_run

    model, tokenizer, _ = load_run(run_dir, device)
    if tokenizer is None:
        raise UserError(f"{run_dir} has no tokenizer/ directory; train with data.tokenizer set")
    _check_address(host, port)
    name = model_name or run_dir.resolve().name
    with Engine(model, tokenizer, max_batch=max_batch) as engine:
        console.print(f"serving {run_dir} as {name!r} on http://{host}:{port}/v1 "
                      f"(max batch {max_batch})")
        uvicorn.run(create_app(engine, name), host=host, port=port, log_level="warning")


def _check_address(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (in use, not this machine's), before
    the model is served: uvicorn would only log it and exit with status 3."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(address)
    except OSError as e:
        reason = e.strerror or str(e)
        raise UserError(f"cannot listen on {host}:{port} ({reason}); choose another --port or "
                        "--host") from None
