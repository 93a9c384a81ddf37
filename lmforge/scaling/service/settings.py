"""The service's settings: where its data lives, what every job trains on, who runs it.

One `ServiceSettings` is built by `lmforge scaling serve` (or a test) and handed to
`lmforge.scaling.service.app.create_app`. The training settings are the same for every
experiment and part of the contract a client sees at ``/docs`` and ``GET /settings``:

    seq_len      tokens per training/validation sequence (the course: 512; CPU default 64)
    val_tokens   validation tokens evaluated after each of the n_evals chunks (course: 2^18)

Data dir layout (``data_dir``):

    service.db           the SQLite database (unless ``db_url`` names another)
    tokens/train.npy     the training token file (+ .npy.json sidecar naming its tokenizer)
    tokens/val.npy       the validation token file (its first ``val_tokens`` are evaluated)
    tokenizer/           the tokenizer that encoded them (when the service made them)
    runs/<experiment_id>/ each experiment's lmforge run directory
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_RUNTIME_S = 43_200  # 12 h: the longest max_runtime_seconds a submit may ask for
DEFAULT_BODY_LIMIT = 64 * 1024  # bytes: a training config is ~1 KB


@dataclass
class ServiceSettings:
    data_dir: Path  # database, token files, run directories (see the module docstring)
    db_url: str = ""  # SQLAlchemy URL; "": sqlite:///<data_dir>/service.db
    train_tokens: str = ""  # training token file (.npy); "": <data_dir>/tokens/train.npy
    val_tokens_file: str = ""  # validation token file (.npy); "": <data_dir>/tokens/val.npy
    seq_len: int = 64  # tokens per sequence (the course: 512)
    val_tokens: int = 2**14  # validation tokens per evaluation (the course: 2^18)
    workers: int = 0  # local worker processes; 0: one per GPU, else 1
    executor: str = "local"  # "local" (worker processes) or "ray"
    ray_address: str = ""  # Ray cluster address for executor "ray" ("": start a local Ray)
    threads_per_worker: int = 0  # torch CPU threads per job; 0: cores // workers
    device: str = "auto"  # the jobs' torch device ("auto": a GPU when there is one)
    poll_s: float = 0.2  # dispatcher loop period (seconds)
    max_body_bytes: int = DEFAULT_BODY_LIMIT  # larger request bodies get 413
    start_dispatcher: bool = True  # False: the API only (experiments stay queued)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'service.db'}"

    @property
    def train_path(self) -> Path:
        if self.train_tokens:
            return Path(self.train_tokens)
        return self.data_dir / "tokens" / "train.npy"

    @property
    def val_path(self) -> Path:
        if self.val_tokens_file:
            return Path(self.val_tokens_file)
        return self.data_dir / "tokens" / "val.npy"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def public(self) -> dict[str, object]:
        """What clients may know: the training settings every experiment shares."""
        return {"seq_len": self.seq_len, "val_tokens": self.val_tokens,
                "max_runtime_seconds": MAX_RUNTIME_S, "executor": self.executor}


def ensure_token_files(settings: ServiceSettings, *, corpus: str | Path | None = None,
                       vocab_size: int = 1024, max_bytes: int | None = None,
                       progress: bool = False) -> tuple[Path, Path]:
    """The (train, val) token files, made on first use when none were given.

    Without `settings.train_tokens`, and when ``<data_dir>/tokens/train.npy`` does not exist
    yet: `corpus` (default: the shipped ``data/small_en.txt``; its first `max_bytes` bytes when
    given) is split into train / validation documents, a BPE tokenizer of `vocab_size` is trained
    on the training documents, and both splits are encoded — the demo's path
    (`lmforge.demo.run_demo`), run once per data dir.
    """
    train, val = settings.train_path, settings.val_path
    if settings.train_tokens or train.is_file():
        return train, val
    from lmforge import ENDOFTEXT
    from lmforge.demo import DEMO_CORPUS
    from lmforge.errors import PathNotFound
    from lmforge.fsutil import atomic_write_text
    from lmforge.tokenizer import train_tokenizer
    from lmforge.tokenizer.split import split_documents

    source = Path(corpus or DEMO_CORPUS)
    if not source.is_file():
        raise PathNotFound(f"corpus {source} does not exist; pass token files with "
                           "--train-tokens/--val-tokens or a text corpus with --corpus")
    with source.open(encoding="utf-8") as f:
        text = f.read(max_bytes) if max_bytes else f.read()
    train_docs, val_docs = split_documents(text)
    out = train.parent
    texts = {"train": out / "train.txt", "val": out / "val.txt"}
    atomic_write_text(texts["train"], ENDOFTEXT.join(train_docs))
    atomic_write_text(texts["val"], ENDOFTEXT.join(val_docs))
    tok = train_tokenizer(texts["train"], vocab_size, [ENDOFTEXT], progress=progress,
                          out=settings.data_dir / "tokenizer")
    tok.encode_file(texts["val"], val, progress=False)
    tok.encode_file(texts["train"], train, progress=False)  # last: its presence means "done"
    return train, val


def data_vocab_size(train: Path) -> int:
    """The number of token ids the training file may hold: its tokenizer's vocabulary size
    (from the .npy.json sidecar), else the largest id + 1."""
    from lmforge.tokenizer.formats import read_sidecar
    from lmforge.train.data import open_tokens

    meta = read_sidecar(train) or {}
    vocab = (meta.get("tokenizer") or {}).get("vocab_size")
    if isinstance(vocab, int):
        return vocab
    return int(open_tokens(train).max()) + 1
