"""`lmforge tokenizer ...`: train, encode, measure, show, export and import BPE tokenizers.

    lmforge tokenizer train data/small_en.txt --vocab-size 2048 --out runs/tok
    lmforge tokenizer encode data/small_en.txt --tokenizer runs/tok --out runs/tokens.npy \\
        --val-fraction 0.05
    lmforge tokenizer stats data/small_en.txt --tokenizer runs/tok
    lmforge tokenizer show "Hello, world!" --tokenizer runs/tok --html tokens.html
    lmforge tokenizer export --tokenizer runs/tok --format hf --out runs/tokenizer.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from lmforge import ENDOFTEXT as EOT
from lmforge.cli import COUNT, PATH, UserError, console, main

if TYPE_CHECKING:
    from lmforge.tokenizer.bpe import Tokenizer

SHOW_CAP_BYTES = 1_000_000  # `tokenizer show` default cap: about 0.6 GB of memory per MB shown
# Alternating token colours; standard ANSI names so they stay distinct on 16-colour terminals.
TOKEN_STYLES = ("white on blue", "black on yellow", "white on magenta", "black on cyan")

@main.group()
def tokenizer() -> None:
    """Byte-level BPE tokenizer: train, encode a corpus, measure, visualize.

    \b
    Typical flow:
      lmforge tokenizer train corpus.txt --vocab-size 10000 --out runs/tok
      lmforge tokenizer encode corpus.txt --tokenizer runs/tok --out runs/t.npy --val-fraction 0.05
      lmforge tokenizer stats corpus.txt --tokenizer runs/tok
      lmforge tokenizer show "Hello, world!" --tokenizer runs/tok
      lmforge tokenizer export --tokenizer runs/tok --format hf --out tokenizer.json
    """


_input = click.argument("input_path", metavar="INPUT", type=PATH)
_inputs = click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=PATH)
_workers = click.option(
    "--workers", type=COUNT, default=None, help="Worker processes (default: one per CPU core)."
)
_tokenizer_dir = click.option(
    "--tokenizer",
    "tokenizer_dir",
    type=PATH,
    required=True,
    help="Tokenizer directory written by `lmforge tokenizer train`.",
)
_progress = click.option(
    "--progress/--no-progress", default=True, help="Show a progress bar (on stderr)."
)
_special = click.option(
    "--special",
    type=click.Choice(["special", "plain", "raise"]),
    default="special",
    show_default=True,
    help="What to do with special-token text (e.g. <|endoftext|>) found in the input: emit the "
    "special id, encode it as plain text, or stop with an error.",
)


@tokenizer.command()
@_inputs
@click.option(
    "--vocab-size",
    type=COUNT,
    required=True,
    help="Total vocabulary size: special tokens + 256 bytes + merges.",
)
@click.option(
    "--special-token",
    "special_tokens",
    multiple=True,
    default=[EOT],
    show_default=True,
    help="A special token (repeat the option for several).",
)
@click.option("--no-special-tokens", is_flag=True, help="Train without any special token.")
@_workers
@click.option(
    "--out",
    type=PATH,
    required=True,
    help="Directory to save the tokenizer in (created; files are replaced).",
)
@_progress
def train(
    inputs: tuple[Path, ...],
    vocab_size: int,
    special_tokens: tuple[str, ...],
    no_special_tokens: bool,
    workers: int | None,
    out: Path,
    progress: bool,
) -> None:
    """Train a byte-level BPE tokenizer on UTF-8 text files and save it to a directory.

    Several INPUT files (or quoted glob patterns such as 'data/*.txt') are one corpus. Documents
    should be separated by a special token (default <|endoftext|>); no merge crosses a special
    token. Prints the vocabulary size, the time taken and the longest tokens.

    \b
    Examples:
      lmforge tokenizer train data/small_en.txt --vocab-size 2048 --out runs/tok
      lmforge tokenizer train 'data/*.txt' --vocab-size 8000 --out runs/tok
    """
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.tokenizer.pretokenize import input_files

    files = input_files(inputs)
    refuse_overwriting_inputs([], files, output_dirs=[out])
    specials = [] if no_special_tokens else list(special_tokens)
    run_train(files, vocab_size, specials, workers, out, progress)


@tokenizer.command()
@_inputs
@_tokenizer_dir
@click.option(
    "--out",
    type=PATH,
    required=True,
    help="Output token array, a .npy file (a .npy.json sidecar is written beside it).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Also split off this fraction of the documents (<|endoftext|>-separated, chosen by a "
    "seeded shuffle) as a validation file beside OUT: runs/tokens.npy -> runs/tokens.val.npy.",
)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the --val-fraction shuffle.")
@_workers
@_special
@_progress
def encode(
    inputs: tuple[Path, ...],
    tokenizer_dir: Path,
    out: Path,
    val_fraction: float | None,
    seed: int,
    workers: int | None,
    special: str,
    progress: bool,
) -> None:
    """Encode UTF-8 text files into a token-id array (.npy) for training.

    Several INPUT files (or quoted glob patterns) are one corpus: the files in order, with
    <|endoftext|> between two files unless the first already ends with it. The array is uint16
    when the vocabulary has at most 65,536 ids, else uint32; open it with
    `numpy.load(path, mmap_mode="r")`. Its .npy.json sidecar names the tokenizer, so
    `lmforge train` takes data.tokenizer and model.vocab_size from it. Prints the token count
    and the throughput.

    \b
    Examples:
      lmforge tokenizer encode data/small_en.txt --tokenizer runs/tok --out runs/tokens.npy
      lmforge tokenizer encode 'data/*.txt' --tokenizer runs/tok --out runs/t.npy --val-fraction .05
    """
    run_encode(inputs, tokenizer_dir, out, workers, special, progress, val_fraction, seed)


@tokenizer.command()
@_input
@_tokenizer_dir
@click.option(
    "--max-bytes",
    type=COUNT,
    default=10_000_000,
    show_default=True,
    help="Measure on the first N bytes of INPUT (cut on a character boundary).",
)
@click.option(
    "--top",
    type=COUNT,
    default=10,
    show_default=True,
    help="How many longest / most frequent tokens to list.",
)
def stats(input_path: Path, tokenizer_dir: Path, max_bytes: int, top: int) -> None:
    """Measure a tokenizer on a text file against the byte, char and word baselines.

    Prints the compression ratio (UTF-8 bytes per token; higher means shorter sequences) of the
    BPE tokenizer and of three baselines, the longest tokens, and how much of the vocabulary the
    text uses. The word baseline's vocabulary is trained on the same text, which flatters it.

    \b
    Example:
      lmforge tokenizer stats data/small_en.txt --tokenizer runs/tok --max-bytes 1000000
    """
    from lmforge.tokenizer.baselines import read_text_prefix
    from lmforge.tokenizer.bpe import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    print_stats(tok, read_text_prefix(input_path, max_bytes), str(input_path), top)


@tokenizer.command()
@click.argument("text", required=False)
@_tokenizer_dir
@click.option(
    "--file",
    "file_path",
    type=PATH,
    help="Show the first --max-bytes of this UTF-8 file instead of TEXT.",
)
@click.option(
    "--max-bytes",
    type=COUNT,
    default=20_000,
    show_default=True,
    help="With --file: how much of the file to show.",
)
@click.option(
    "--cap-bytes",
    type=COUNT,
    default=SHOW_CAP_BYTES,
    show_default=True,
    help="The most text (UTF-8 bytes) show displays: about 0.6 GB of memory and 12 s per MB.",
)
@click.option(
    "--html",
    "html_path",
    type=PATH,
    help="Also write a self-contained HTML page (hover a token for its id and bytes).",
)
@_special
def show(
    text: str | None,
    tokenizer_dir: Path,
    file_path: Path | None,
    max_bytes: int,
    cap_bytes: int,
    html_path: Path | None,
    special: str,
) -> None:
    """Show how a text is split into tokens: each token on its own background colour, then ids.

    At most --cap-bytes (1 MB) are shown: a longer TEXT or --max-bytes is an error.

    \b
    Examples:
      lmforge tokenizer show "Hello, world!" --tokenizer runs/tok
      lmforge tokenizer show --file data/small_en.txt --tokenizer runs/tok --html tokens.html
    """
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.tokenizer.baselines import read_text_prefix
    from lmforge.tokenizer.bpe import Tokenizer

    if (text is None) == (file_path is None):
        raise click.UsageError("give either TEXT or --file PATH (exactly one).")
    cost = "(showing costs about 0.6 GB of memory per MB)"
    if file_path is not None and max_bytes > cap_bytes:
        raise UserError(f"--max-bytes {max_bytes:,} is more than tokenizer show displays "
                        f"(--cap-bytes {cap_bytes:,}) {cost}; lower --max-bytes, or raise "
                        f"--cap-bytes if you have the memory")
    if text is not None and (size := len(text.encode("utf-8", "surrogatepass"))) > cap_bytes:
        raise UserError(f"TEXT is {size:,} bytes, more than tokenizer show displays (--cap-bytes "
                        f"{cap_bytes:,}) {cost}; show a prefix with --file PATH --max-bytes N, or "
                        "raise --cap-bytes")
    refuse_overwriting_inputs([html_path], [file_path, tokenizer_dir])
    if file_path is not None:
        text = read_text_prefix(file_path, max_bytes)
    assert text is not None  # exactly one of TEXT and --file, checked above
    tok = Tokenizer.load(tokenizer_dir)
    ids = tok.encode(text, special=special)
    print_tokens(tok, ids)
    if html_path is not None:
        from lmforge.fsutil import atomic_write_text
        from lmforge.tokenizer.visualize import tokens_html

        atomic_write_text(html_path, tokens_html(tok, ids))
        console.print(f"wrote {html_path}")


@tokenizer.command("export")
@_tokenizer_dir
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf", "tiktoken", "gpt2"]),
    required=True,
    help="hf: a HuggingFace tokenizer.json; tiktoken: a .tiktoken rank file; gpt2: vocab.json + "
    "merges.txt in a directory.",
)
@click.option(
    "--out", type=PATH, required=True, help="Output file (hf, tiktoken) or directory (gpt2)."
)
def export(tokenizer_dir: Path, fmt: str, out: Path) -> None:
    """Export a tokenizer for other libraries; each export encodes exactly like lmforge.

    \b
    Examples:
      lmforge tokenizer export --tokenizer runs/tok --format hf --out runs/tokenizer.json
      lmforge tokenizer export --tokenizer runs/tok --format tiktoken --out runs/tok.tiktoken
    """
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.tokenizer.bpe import Tokenizer
    from lmforge.tokenizer.formats import (
        export_hf_tokenizer_json,
        export_tiktoken,
        write_gpt2_vocab_merges,
    )

    files = [out / "vocab.json", out / "merges.txt"] if fmt == "gpt2" else [out]
    refuse_overwriting_inputs(files, [tokenizer_dir])
    tok = Tokenizer.load(tokenizer_dir)
    if fmt == "gpt2":
        out.mkdir(parents=True, exist_ok=True)
        write_gpt2_vocab_merges(
            tok.vocab, tok.merges, out / "vocab.json", out / "merges.txt", tok.special_tokens
        )
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        (export_hf_tokenizer_json if fmt == "hf" else export_tiktoken)(tok, out)
    console.print(f"wrote {out} ({fmt})")


@tokenizer.command("import-gpt2")
@click.argument("vocab_json", type=PATH)
@click.argument("merges_txt", type=PATH)
@click.option(
    "--special-token",
    "specials",
    multiple=True,
    default=[EOT],
    show_default=True,
    help="A special token of this vocabulary (repeat the option for several).",
)
@click.option("--out", type=PATH, required=True, help="Tokenizer directory to write.")
def import_gpt2(vocab_json: Path, merges_txt: Path, specials: Sequence[str], out: Path) -> None:
    """Turn GPT-2 style vocab.json + merges.txt into an lmforge tokenizer directory.

    With GPT-2's published files the result encodes exactly like tiktoken's "gpt2".

    \b
    Example:
      lmforge tokenizer import-gpt2 gpt2_vocab.json gpt2_merges.txt --out runs/gpt2
    """
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.tokenizer.bpe import Tokenizer

    refuse_overwriting_inputs([], [vocab_json, merges_txt], output_dirs=[out])
    tok = Tokenizer.from_files(vocab_json, merges_txt, list(specials))
    tok.save(out)
    console.print(f"wrote {out}: vocab size {tok.vocab_size:,}, {len(tok.merges):,} merges")



def run_train(
    inputs: Sequence[Path],
    vocab_size: int,
    specials: Sequence[str],
    workers: int | None,
    out: Path,
    progress: bool,
) -> Tokenizer:
    """Train, save and print a summary; returns the Tokenizer."""
    from lmforge.tokenizer.baselines import longest_tokens
    from lmforge.tokenizer.train import train_tokenizer

    t0 = time.perf_counter()
    tok = train_tokenizer(inputs, vocab_size, specials, num_workers=workers, progress=progress,
                          out=out)
    seconds = time.perf_counter() - t0
    console.print(
        f"trained on {_names(inputs)} in {seconds:.1f} s: vocab size {tok.vocab_size:,} "
        f"({len(tok.special_tokens)} special + 256 bytes + {len(tok.merges):,} merges)"
    )
    longest = ", ".join(
        _shown(b) for _, b in longest_tokens(tok.vocab, 5, skip=_special_bytes(tok))
    )
    console.print(f"longest tokens: {longest}")
    console.print(f"saved to {out}")
    return tok


def run_encode(
    inputs: Sequence[Path],
    tokenizer_dir: Path,
    out: Path,
    workers: int | None,
    special: str,
    progress: bool,
    val_fraction: float | None = None,
    seed: int = 0,
) -> None:
    """Encode files to ``out`` (.npy), and ``--val-fraction`` of the documents to its ``.val.npy``
    sibling; print tokens, throughput and the output paths."""
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.tokenizer.bpe import Tokenizer
    from lmforge.tokenizer.formats import sidecar_path, val_token_path
    from lmforge.tokenizer.pretokenize import input_files

    if out.suffix != ".npy":
        raise click.BadParameter(f"{out} must end in .npy", param_hint="--out")
    files = input_files(inputs)
    outputs = [out, val_token_path(out)] if val_fraction else [out]
    refuse_overwriting_inputs([q for p in outputs for q in (p, sidecar_path(p))],
                              [*files, tokenizer_dir])
    tok = Tokenizer.load(tokenizer_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = tok.encode_file(files, out, workers, special=special, progress=progress,
                        val_fraction=val_fraction or 0.0, seed=seed)
    tokens = r.num_tokens + (r.val.num_tokens if r.val else 0)
    console.print(
        f"encoded {r.input_bytes / 1e6:,.1f} MB of {_names(files)} into {tokens:,} tokens "
        f"({r.input_bytes / max(tokens, 1):.3f} bytes/token, {r.dtype}) "
        f"in {r.seconds:.1f} s = {r.input_bytes / 1e6 / max(r.seconds, 1e-9):,.1f} MB/s"
    )
    if r.val is None:
        console.print(f"wrote {r.output_path} (+ {r.sidecar_path.name})")
        return
    split = r.metadata["split"]
    console.print(f"wrote {r.output_path} (+ {r.sidecar_path.name}): {split['documents']:,} "
                  f"training documents, {r.num_tokens:,} tokens")
    console.print(f"wrote {r.val.output_path} (+ {r.val.sidecar_path.name}): "
                  f"{r.val.metadata['split']['documents']:,} validation documents, "
                  f"{r.val.num_tokens:,} tokens")


def _names(files: Sequence[Path]) -> str:
    """``a.txt``, or ``3 files (a.txt, ...)``."""
    return str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"


def print_stats(tok: Tokenizer, text: str, source: str, top: int) -> None:
    """Print the ``tokenizer_stats`` of ``tok`` on ``text`` as tables."""
    from lmforge.tokenizer.baselines import longest_tokens, tokenizer_stats

    s = tokenizer_stats(tok, text, top_k=top)
    table = Table(title=f"compression on {s.n_bytes:,} bytes of {source}")
    for col in ("tokenizer", "vocab size", "tokens", "bytes/token"):
        table.add_column(col, justify="left" if col == "tokenizer" else "right")
    for name, ratio in s.ratios.items():
        label = "word*" if name == "word" else name
        table.add_row(label, f"{s.vocab_sizes[name]:,}", f"{s.n_tokens[name]:,}", f"{ratio:.3f}")
    console.print(table)
    console.print("* word: vocabulary trained on this same text, so no word is unknown here.")
    console.print(
        f"vocabulary use: {s.ids_used:,} of {s.vocab_sizes['bpe']:,} ids "
        f"({100 * s.vocab_used:.1f}%)"
    )
    longest = ", ".join(
        f"{_shown(b)} ({len(b)})"
        for _, b in longest_tokens(tok.vocab, top, skip=_special_bytes(tok))
    )
    console.print(f"longest tokens (bytes): {longest}")
    frequent = ", ".join(
        f"{_shown(tok.token_bytes(i))} {100 * c / s.n_tokens['bpe']:.1f}%"
        for i, c in s.most_frequent
    )
    console.print(f"most frequent tokens: {frequent}")


def print_tokens(tok: Tokenizer, ids: list[int]) -> None:
    """Print the text with each token on an alternating background colour, then the ids."""
    from lmforge.tokenizer.visualize import display_text

    line = Text()
    for k, i in enumerate(ids):
        piece = display_text(tok.token_bytes(i)).replace("\n", "\\n\n")
        line.append(piece, style=TOKEN_STYLES[k % len(TOKEN_STYLES)])
    console.print(line)
    console.print(f"{len(ids)} tokens: {ids}")


def _shown(token: bytes) -> str:
    """A token quoted so whitespace is visible: ``b' the'`` -> ``' the'``; partial UTF-8 stays
    bytes: ``b'\\xf0\\x9f'``."""
    try:
        return repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(token)


def _special_bytes(tok: Tokenizer) -> set[bytes]:
    return {s.encode("utf-8") for s in tok.special_tokens}
