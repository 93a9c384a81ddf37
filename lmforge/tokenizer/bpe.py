"""The byte-level BPE ``Tokenizer``: encode/decode, streaming, and whole-file encoding.

Encoding (Sennrich et al., 2016; GPT-2, Radford et al., 2019) works on one *pre-token* at a time:

1. split the text on special tokens (longest first, so ``<|endoftext|><|endoftext|>`` wins over
   two ``<|endoftext|>`` when both are specials); each special becomes its own id;
2. split the ordinary text with GPT-2's regex (``pretokenize.GPT2_PATTERN``);
3. turn each pre-token's UTF-8 bytes into single-byte ids and repeatedly merge the adjacent pair
   with the lowest merge rank (leftmost first) until no adjacent pair is a merge.

    >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    >>> tok = Tokenizer(vocab, [(b"a", b"b")], ["<|endoftext|>"])
    >>> tok.encode("abc<|endoftext|>")
    [256, 99, 257]
    >>> tok.decode([256, 99])
    'abc'

Step 3 exists twice: the readable reference below (``_bpe``, with a bounded cache of pre-token ->
ids) and the C encoder from ``native.encode_module()`` (built lazily on first use, released GIL),
used automatically when it is built; the C encoder also does steps 1-2 itself (it is handed the
specials, longest first). Tests prove both equal tiktoken's GPT-2 ids. ``encode_batch`` encodes
many documents on C threads; ``encode_utf8_to_bytes`` encodes UTF-8 bytes (e.g. a memoryview of
an mmap'd file) without making a str.

Streaming (``encode_iterable``) keeps a text buffer and emits everything before the last *safe
cut*: a position where the pre-token split and the special-token split of the whole text are
known to break, whatever text follows (see ``_CUT_REGEX``). Whole files (``encode_file``) are
encoded in parallel by ``encode_file.write_token_file`` through ``encode_to_bytes``. Files are
read and written by ``formats``, which does not depend on this class.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import regex

from lmforge.procutil import gc_paused
from lmforge.tokenizer import native
from lmforge.tokenizer.encode_file import EncodeFileResult, write_token_file
from lmforge.tokenizer.formats import read_gpt2_vocab_merges, read_tokenizer_dir, save_tokenizer
from lmforge.tokenizer.pretokenize import (
    GPT2_REGEX,
    TokenizerInputError,
    check_special_tokens,
    default_num_workers,
    input_files,
    special_token_regex,
    split_on_special_tokens,
)

SPECIAL_POLICIES = ("special", "plain", "raise")
_CACHE_MAX = 1 << 17  # pre-tokens kept in the reference encoder's cache before it is cleared
_STREAM_BLOCK = 1 << 16  # characters buffered by encode_iterable before it looks for a cut

# A pre-token boundary that holds whatever surrounds it, between char x and the next char y: the
# regex match that ends at x is the same whether or not text follows x, and the next match starts
# at y. Cases: x letter, y not a letter; x digit, y not a digit; x other (not space/letter/digit
# and not an apostrophe that may start "'s") and y space/letter/digit; x an apostrophe and y
# space/digit; x a lone whitespace char other than U+0020 between two non-spaces (U+0020 may
# join the next word, and a longer whitespace run splits differently at the end of the text).
_CUT_REGEX = regex.compile(
    r"""(?r)(?:\p{L}(?=\P{L})|\p{N}(?=\P{N})|[^\s\p{L}\p{N}'](?=[\s\p{L}\p{N}])"""
    r"""|'(?=[\s\p{N}])|(?<=\S)[^\S ](?=\S))"""
)


class Tokenizer:
    """Byte-level BPE tokenizer over ``vocab`` (id -> bytes) and ``merges`` (rank order).

    ``special_tokens`` absent from ``vocab`` are appended with new ids (max id + 1, ...).
    Invalid input (duplicate specials or token bytes, a merge whose parts or result are not in
    the vocabulary, a byte value without a single-byte token) raises TokenizerInputError.
    """

    @gc_paused()
    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
    ):
        self.special_tokens = check_special_tokens(special_tokens or [])
        self._bytes_to_id = _invert_vocab(vocab)
        self.vocab = {i: b for b, i in self._bytes_to_id.items()}
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.directory: Path | None = None  # set by load()/save(); named in encode_file sidecars
        self._special_ids = self._add_specials()
        # The vocabulary is fixed from here on (the C encoder and the fingerprint rely on it too);
        # max() over GPT-2's 50K ids took 1.6 ms a call, twice in every encode_file.
        self._vocab_size = max(self.vocab, default=-1) + 1
        self._byte_ids = _single_byte_ids(self._bytes_to_id)
        self._ranks = _merge_ranks(self.merges, self._bytes_to_id)
        self._special_re = special_token_regex(self.special_tokens)
        # (bytes, id) of each special, longest first: the C encoder splits on them itself
        self._special_pairs = tuple(
            (t.encode("utf-8"), self._special_ids[t])
            for t in sorted(set(self.special_tokens), key=lambda t: (-len(t), t))
        )
        self._cache: dict[str, list[int]] = {}
        self._fingerprint: str | None = None
        self._native = None  # C encoder, built on first use (see _encoder)
        self._native_lock = threading.Lock()

    def _add_specials(self) -> dict[str, int]:
        ids = {}
        for s in self.special_tokens:
            b = s.encode("utf-8")
            if b not in self._bytes_to_id:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = b
                self._bytes_to_id[b] = new_id
            ids[s] = self._bytes_to_id[b]
        return ids

    # ----------------------------------------------------------------- pickling and facts

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_native=None, _native_lock=None, _cache={})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._native_lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        """Number of ids (``max id + 1``; equals ``len(vocab)`` for a dense vocabulary)."""
        return self._vocab_size

    def token_bytes(self, id: int) -> bytes:
        """The bytes of token ``id`` (TokenizerInputError if unknown)."""
        try:
            return self.vocab[id]
        except KeyError:
            raise TokenizerInputError(
                f"unknown token id {id!r} (vocab_size {self.vocab_size})"
            ) from None

    def id_of(self, token: bytes) -> int | None:
        """The id whose bytes are ``token``, or None."""
        return self._bytes_to_id.get(bytes(token))

    def fingerprint(self) -> str:
        """SHA-256 (hex) of ``repr((sorted(vocab.items()), merges, special_tokens))``: equal
        fingerprints, equal tokenizers. Computed once (a Tokenizer is not meant to be mutated)."""
        if self._fingerprint is None:
            with gc_paused():  # the 50K item tuples would wake the GC over the whole tokenizer
                self._fingerprint = self._vocabulary_hash()
        return self._fingerprint

    def _vocabulary_hash(self) -> str:
        h = hashlib.sha256(b"(")
        for seq in (sorted(self.vocab.items()), self.merges):
            h.update(b"[")
            for block in _repr_blocks(seq):
                h.update(block)
            h.update(b"], ")
        h.update(f"{self.special_tokens!r})".encode())
        return h.hexdigest()

    # -------------------------------------------------------------------------- encoding

    def encode(self, text: str, *, special: str = "special") -> list[int]:
        """Token ids of ``text``.

        ``special`` says what to do with special-token text found in ``text``: ``"special"``
        emits the special's id (longest match first), ``"plain"`` encodes it as ordinary text,
        ``"raise"`` raises TokenizerInputError.
        """
        _check_policy(special)
        enc = self._encoder()
        if enc is not None:
            return enc.encode(text, self._c_specials(text, special))
        if special == "plain" or self._special_re is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for piece, is_special in split_on_special_tokens(text, self._special_re):
            if not is_special:
                ids.extend(self.encode_ordinary(piece))
            elif special == "special":
                ids.append(self._special_ids[piece])
            else:
                raise _special_found(piece)
        return ids

    def encode_batch(
        self, texts: Sequence[str], *, special: str = "special", num_threads: int | None = None
    ) -> list[list[int]]:
        """``[encode(t, special=special) for t in texts]``, on ``num_threads`` threads (default:
        the usable cores, at most 64) with the GIL released: the C encoder splits the documents
        among the threads, each with its own caches, and the lists are built at the end. For
        bulk encoding, ``encode_batch_flat`` skips the Python int per id.

        >>> tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: b"ab"}, [(b"a", b"b")])
        >>> tok.encode_batch(["ab", "", "cab"])
        [[256], [], [99, 256]]
        """
        texts, enc, threads, specials = self._batch_args(texts, special, num_threads)
        if enc is None:
            return [self.encode(t, special=special) for t in texts]
        return enc.encode_batch(texts, threads, specials)

    def encode_batch_flat(
        self, texts: Sequence[str], *, special: str = "special", num_threads: int | None = None,
        dtype: str | np.dtype | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids in one flat array: ``(ids, offsets)``, the ids of ``texts[i]`` being
        ``ids[offsets[i]:offsets[i + 1]]`` (``offsets``: int64, ``len(texts) + 1`` of them).
        ``ids`` is uint16 when the vocabulary fits (as ``encode_file`` writes), else uint32, or
        ``dtype``. Encoded as ``encode_batch`` does, then copied straight into the array by the
        same threads: no Python int per id, which is what bulk encoding in memory needs (the
        same contract as ``fastokens``' ``encode_batch_flat``).

        >>> tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: b"ab"}, [(b"a", b"b")])
        >>> ids, offsets = tok.encode_batch_flat(["ab", "", "cab"])
        >>> ids.tolist(), offsets.tolist(), ids.dtype.name
        ([256, 99, 256], [0, 1, 1, 3], 'uint16')
        """
        dt = np.dtype(dtype or ("<u2" if self.vocab_size <= 65536 else "<u4")).newbyteorder("<")
        if dt.kind != "u" or dt.itemsize not in (2, 4):
            raise TokenizerInputError(f"dtype={dtype!r}: ids are uint16 or uint32.")
        texts, enc, threads, specials = self._batch_args(texts, special, num_threads)
        if enc is None:
            parts = [np.asarray(self.encode(t, special=special), dt) for t in texts]
            lengths = np.array([0] + [len(p) for p in parts], np.int64)
            return np.concatenate([np.zeros(0, dt), *parts]), np.cumsum(lengths)
        ids, offsets = enc.encode_batch_flat(texts, dt.itemsize, threads, specials)
        return np.frombuffer(ids, dt), np.frombuffer(offsets, np.int64)

    def _batch_args(self, texts: Sequence[str], special: str, num_threads: int | None) -> tuple:
        """``(texts as a list, C encoder or None, threads, C specials)`` for a batch call;
        checks the policy and the thread count, and raises for "raise" if a text holds a
        special token."""
        _check_policy(special)
        texts = list(texts)
        enc = self._encoder()
        threads = min(64, num_threads or default_num_workers())
        if threads < 1:
            raise TokenizerInputError(f"num_threads={num_threads!r}: give at least 1 thread.")
        for t in texts if special == "raise" and enc is not None else ():
            self._c_specials(t, special)  # raises on the first special found
        specials = self._special_pairs if special == "special" and self._special_pairs else None
        return texts, enc, threads, specials

    def _c_specials(self, text: str, special: str) -> tuple[tuple[bytes, int], ...] | None:
        """The ``specials`` argument of the C encoder for ``text`` under the policy ``special``
        (None: encode it all as ordinary text); raises TokenizerInputError for "raise" when
        ``text`` holds a special."""
        if special == "plain" or not self._special_pairs:
            return None
        if special == "raise":
            if any(t in text for t in self.special_tokens):
                m = self._special_re.search(text) if self._special_re else None
                raise _special_found(m.group() if m else self.special_tokens[0])
            return None
        return self._special_pairs

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` with special-token text treated as plain text."""
        enc = self._encoder()
        if enc is not None:
            return enc.encode(text)
        return self.encode_reference(text)

    def encode_to_bytes(self, text: str, itemsize: int = 2, *, special: str = "special") -> bytes:
        """``encode(text, special=special)`` packed as little-endian unsigned ints of ``itemsize``
        bytes (2 or 4): the data of a token array, without a Python int per id.

        >>> Tokenizer({i: bytes([i]) for i in range(256)}, []).encode_to_bytes("hi")
        b'h\\x00i\\x00'
        """
        _check_policy(special)
        enc = self._encoder()
        if enc is None:
            return np.asarray(self.encode(text, special=special), f"<u{itemsize}").tobytes()
        return enc.encode_to_bytes(text, itemsize, self._c_specials(text, special))

    def encode_utf8_to_bytes(
        self, data: bytes | bytearray | memoryview, itemsize: int = 2, *, special: str = "special"
    ) -> bytes:
        """``encode_to_bytes(bytes(data).decode("utf-8"), itemsize, special=special)`` without
        making the str: the C encoder reads the UTF-8 bytes in place (e.g. a ``memoryview`` of
        an ``mmap``'d file) with the GIL released. Invalid UTF-8 raises the
        ``UnicodeDecodeError`` that ``decode`` raises.

        >>> Tokenizer({i: bytes([i]) for i in range(256)}, []).encode_utf8_to_bytes(b"hi")
        b'h\\x00i\\x00'
        """
        _check_policy(special)
        enc = self._encoder()
        if enc is None or special == "raise":
            return self.encode_to_bytes(bytes(data).decode("utf-8"), itemsize, special=special)
        specials = self._special_pairs if special == "special" and self._special_pairs else None
        return enc.encode_utf8_to_bytes(data, itemsize, specials)

    def encode_utf8_into(
        self, data: bytes | bytearray | memoryview, out: bytearray | memoryview,
        itemsize: int = 2, *, special: str = "special",
    ) -> int:
        """``encode_utf8_to_bytes`` packed into ``out`` (a writable buffer of at least
        ``len(data) * itemsize`` bytes, e.g. a numpy array's ``.data``: there are never more ids
        than bytes) instead of a new ``bytes``; returns the number of ids. A buffer reused across
        calls spares a copy and the fresh memory (page faults) of a new ``bytes`` per call.

        >>> out = bytearray(4)
        >>> Tokenizer({i: bytes([i]) for i in range(256)}, []).encode_utf8_into(b"hi", out)
        2
        >>> bytes(out)
        b'h\\x00i\\x00'
        """
        _check_policy(special)
        enc = self._encoder()
        if enc is None or special == "raise":
            packed = self.encode_utf8_to_bytes(data, itemsize, special=special)
            with memoryview(out) as whole, whole.cast("B") as dst:
                if len(packed) > len(dst):
                    raise ValueError(f"out holds {len(dst)} bytes; the {len(packed) // itemsize} "
                                     f"ids need {len(packed)}")
                dst[: len(packed)] = packed
            return len(packed) // itemsize
        specials = self._special_pairs if special == "special" and self._special_pairs else None
        return enc.encode_utf8_to_bytes(data, itemsize, specials, out)

    def encode_reference(self, text: str) -> list[int]:
        """``encode_ordinary`` by the pure-Python reference (regex + cached merge loop)."""
        ids: list[int] = []
        cache = self._cache
        for pre in GPT2_REGEX.findall(text):
            cached = cache.get(pre)
            if cached is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cached = cache[pre] = self._bpe(pre.encode("utf-8"))
            ids.extend(cached)
        return ids

    def _bpe(self, piece: bytes) -> list[int]:
        """Merge one pre-token's bytes: lowest-rank adjacent pair first, leftmost first.

        >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"aa", 257: b"aaa"}
        >>> Tokenizer(vocab, [(b"a", b"a"), (b"aa", b"a")])._bpe(b"aaaaa")
        [256, 257]
        """
        ids = [self._byte_ids[b] for b in piece]
        ranks = self._ranks
        while len(ids) > 1:
            best = min(itertools.pairwise(ids), key=lambda p: ranks.get(p, (len(ranks),))[0])
            if best not in ranks:
                break
            new_id, out, i = ranks[best][1], [], 0
            while i < len(ids):  # merge every occurrence, left to right (same as one by one)
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    @contextlib.contextmanager
    def shared_cache(self, nbytes: int) -> Iterator[None]:
        """Within the block every encoding call, from any thread, uses one cache of pre-token ->
        ids sized for about ``nbytes`` of text, so threads that encode parts of one corpus (as
        ``encode_file`` does) do not each BPE-encode the pre-tokens they first meet. The ids are
        the same either way; without the C encoder this does nothing.

        >>> tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
        >>> with tok.shared_cache(1 << 20):
        ...     tok.encode("hi")
        [104, 105]
        """
        enc = self._encoder()
        if enc is None:
            yield
            return
        enc.share_cache(nbytes)
        try:
            yield
        finally:
            enc.unshare_cache()  # takes effect when the last call in flight returns

    @property
    def has_native_encoder(self) -> bool:
        """Whether encoding runs in C (which releases the GIL, so threads encode in parallel)."""
        return self._encoder() is not None

    def _encoder(self):
        """The C encoder for this vocabulary, built on first use; None without the C module."""
        if self._native is None:
            mod = native.encode_module()
            if mod is None:
                return None
            with self._native_lock:
                if self._native is None:
                    self._native = mod.Encoder(self.vocab, self.merges)
        return self._native

    def encode_iterable(
        self, iterable: Iterable[str], *, special: str = "special"
    ) -> Iterator[int]:
        """Lazily yield exactly ``encode("".join(iterable), special=special)``.

        Memory stays bounded (a few blocks of 64K characters, plus any stretch with no safe cut
        such as one huge run of whitespace) on a file handle of any size, even without newlines.
        With ``special="raise"`` ids before the offending special may already have been yielded.
        """
        _check_policy(special)
        pending: list[str] = []
        size = 0
        need = _STREAM_BLOCK
        for chunk in iterable:
            pending.append(chunk)
            size += len(chunk)
            if size < need:
                continue
            buf, start = "".join(pending), 0
            while len(buf) - start >= _STREAM_BLOCK:
                cut = self._safe_cut(buf, start, start + _STREAM_BLOCK, special)
                if cut == start:
                    cut = self._safe_cut(buf, start, len(buf), special)
                    if cut == start:
                        break
                yield from self.encode(buf[start:cut], special=special)
                start = cut
            pending, size = [buf[start:]], len(buf) - start
            need = size + _STREAM_BLOCK if start else 2 * size
        yield from self.encode("".join(pending), special=special)

    def _safe_cut(self, buf: str, start: int, end: int, special: str) -> int:
        """The largest cut ``i`` in ``[start, end]`` decided by ``buf[start:end]`` alone: the ids
        of ``buf[start:i]`` followed by those of ``buf[i:] + rest`` equal the ids of
        ``buf[start:] + rest`` for every ``rest``. ``start`` must itself be such a cut; returns
        ``start`` when no other is known.

        A special starting at or before ``end - max_len`` is decided (the longest one that can
        start there fits), so a cut up to there is safe at a special's end or at a pre-token
        cut (``_CUT_REGEX``) between two ordinary characters.
        """
        pattern = None if special == "plain" else self._special_re
        last_end, limit = start, end - 1
        if pattern is not None:
            limit = end - max(map(len, self.special_tokens))
            for m in pattern.finditer(buf, start, end):
                if m.start() > limit:
                    break
                last_end = m.end()
        m = _CUT_REGEX.search(buf, last_end, limit + 1) if limit > last_end else None
        return m.end() if m else last_end

    # -------------------------------------------------------------------------- decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids`` (TokenizerInputError for an unknown id)."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int | np.integer) or i not in self.vocab)
            raise TokenizerInputError(
                f"unknown token id {bad!r}: valid ids are 0..{self.vocab_size - 1}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder that takes ids one at a time (for streaming generation)."""
        return StreamDecoder(self)

    # ----------------------------------------------------------------------------- files

    def encode_file(
        self,
        input_path: str | os.PathLike | Sequence[str | os.PathLike],
        output_path: str | os.PathLike,
        num_workers: int | None = None,
        *,
        special: str = "special",
        progress: bool = True,
        chunk_bytes: int | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
    ) -> EncodeFileResult:
        """Encode a UTF-8 file to a ``.npy`` token array plus sidecar ``{output_path}.json``.

        ``input_path`` may also be several files and glob patterns: one corpus, the files in
        order with ``<|endoftext|>`` between two files (not after one that already ends with it),
        so the ids are exactly those of encoding the joined text. The text is cut at safe
        offsets (``find_chunk_boundaries``) into chunks of about ``chunk_bytes`` (default: up to
        4 MiB), encoded by ``num_workers`` threads (C encoder, which releases the GIL) or
        processes (Python reference), and written in order to a temporary file that replaces
        ``output_path`` only on success. The array is uint16 when ``vocab_size <= 65536``, else
        uint32; open it with ``np.load(path, mmap_mode="r")``.

        ``val_fraction`` > 0 splits the corpus by document (``split.split_token_ids``, seeded by
        ``seed``): the training documents go to ``output_path``, the validation ones to
        ``formats.val_token_path(output_path)`` (``tokens.npy`` -> ``tokens.val.npy``), each
        with its sidecar; the result's ``val`` describes the second file.
        """
        _check_policy(special)
        return write_token_file(
            self, input_files(input_path), output_path, num_workers, special, progress,
            chunk_bytes, val_fraction=val_fraction, seed=seed,
        )

    @classmethod
    def from_files(
        cls,
        vocab_filepath: str | os.PathLike,
        merges_filepath: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> Tokenizer:
        """Load GPT-2 style ``vocab.json`` + ``merges.txt``."""
        specials = list(special_tokens or [])
        vocab, merges = read_gpt2_vocab_merges(vocab_filepath, merges_filepath, specials)
        return cls(vocab, merges, specials)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a self-describing tokenizer directory (see ``formats.save_tokenizer``)."""
        path = Path(save_tokenizer(self, directory))
        self.directory = path
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Open a directory written by ``save`` (see ``formats.read_tokenizer_dir``)."""
        tok = cls(*read_tokenizer_dir(directory))
        tok.directory = Path(directory)
        return tok


class StreamDecoder:
    """Incremental decoding: ``feed(id)`` returns only complete UTF-8 characters.

    >>> tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    >>> d = tok.stream_decoder()
    >>> [d.feed(b) for b in "é!".encode()], d.flush()
    (['', 'é', '!'], '')
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, id: int) -> str:
        """Add one id; return the text completed by it (possibly empty)."""
        return self._utf8.decode(self._tokenizer.token_bytes(id))

    def flush(self) -> str:
        """End of stream: return what is left (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def _repr_blocks(seq: list) -> Iterator[bytes]:
    """``", ".join(map(repr, seq)).encode()`` in consecutive pieces: one call to the C
    ``repr_join`` (~2 ms for GPT-2's vocabulary), or without it, blocks of 2048 items, so no
    single call holds the GIL for long (``encode_file`` hashes while its threads encode)."""
    join = native.repr_join()
    if join is not None:
        yield join(seq)
        return
    for i in range(0, len(seq), 2048):
        yield ((", " if i else "") + ", ".join(map(repr, seq[i:i + 2048]))).encode()


def _special_found(piece: str) -> TokenizerInputError:
    return TokenizerInputError(
        f"special token {piece!r} found in the input text; pass special='special' "
        "to encode it as a special token or special='plain' to encode it as text."
    )


def _check_policy(special: str) -> None:
    if special not in SPECIAL_POLICIES:
        raise TokenizerInputError(
            f"special={special!r} is not a special-token policy; use one of {SPECIAL_POLICIES}."
        )


def _invert_vocab(vocab: dict[int, bytes]) -> dict[bytes, int]:
    """``{token bytes: id}``, validating every entry (in bulk where plainly valid)."""
    ids, tokens = vocab.keys(), vocab.values()
    if (all(type(i) is int for i in ids) and min(ids, default=0) >= 0
            and all(type(b) is bytes for b in tokens)):
        inverse = dict(zip(tokens, ids, strict=True))
        if len(inverse) == len(vocab):
            return inverse
    inverse = {}  # the loop that names the entry at fault (and takes bytearrays)
    for i, b in vocab.items():
        if not isinstance(i, int) or i < 0 or not isinstance(b, bytes | bytearray):
            raise TokenizerInputError(f"vocab entry {i!r}: {b!r} is not (id >= 0) -> bytes.")
        if bytes(b) in inverse:
            raise TokenizerInputError(
                f"ids {inverse[bytes(b)]} and {i} both have bytes {bytes(b)!r}; "
                "every token must have distinct bytes."
            )
        inverse[bytes(b)] = i
    return inverse


def _single_byte_ids(bytes_to_id: dict[bytes, int]) -> list[int]:
    missing = [b for b in range(256) if bytes([b]) not in bytes_to_id]
    if missing:
        raise TokenizerInputError(
            f"the vocabulary lacks single-byte tokens for {len(missing)} byte values "
            f"(first: {missing[0]}); a byte-level BPE vocabulary must contain all 256 bytes."
        )
    return [bytes_to_id[bytes([b])] for b in range(256)]


def _merge_ranks(
    merges: list[tuple[bytes, bytes]], bytes_to_id: dict[bytes, int]
) -> dict[tuple[int, int], tuple[int, int]]:
    """``(left id, right id) -> (rank, merged id)``, validating every merge (in bulk where all
    are plainly valid: ~15 ms for GPT-2's 50K, where the loop takes ~90)."""
    get = bytes_to_id.get
    lefts = [get(a) for a, _ in merges]
    rights = [get(b) for _, b in merges]
    merged = [get(a + b) for a, b in merges]
    if None not in lefts and None not in rights and None not in merged:
        pairs = zip(lefts, rights, strict=True)
        bulk = dict(zip(pairs, zip(range(len(merges)), merged, strict=True), strict=True))
        if len(bulk) == len(merges):
            return bulk  # type: ignore[return-value]  # no None: checked just above
    ranks: dict[tuple[int, int], tuple[int, int]] = {}  # the loop that names the merge at fault
    for rank, (a, b) in enumerate(merges):
        for part in (a, b, a + b):
            if part not in bytes_to_id:
                raise TokenizerInputError(
                    f"merge #{rank} ({a!r}, {b!r}): {part!r} is not in the vocabulary."
                )
        pair = (bytes_to_id[a], bytes_to_id[b])
        if pair in ranks:
            raise TokenizerInputError(f"merge #{rank} ({a!r}, {b!r}) is listed twice.")
        ranks[pair] = (rank, bytes_to_id[a + b])
    return ranks
