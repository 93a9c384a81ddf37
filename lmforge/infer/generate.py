"""Autoregressive text generation: temperature, top-k and nucleus (top-p) sampling.

What: turn a language model ``model(token_ids (batch, seq)) -> logits (batch, seq, vocab)`` into a
stream of new tokens. ``sample_next_token`` draws one token from last-position logits,
``generate_ids`` yields token ids one at a time, and ``generate`` wraps both with a tokenizer,
streaming decoded text as it is produced.

Key idea: each step runs the model over the last ``context_length`` tokens (no KV cache yet: the
whole cropped window is recomputed, O(T^2) per step), takes the logits at the final position and
samples from a reshaped distribution, applied in this order (the HuggingFace / nanoGPT order):

1. temperature T:   p_i ∝ exp(z_i / T); T -> 0 is greedy argmax, T = 1 is the model's own
   distribution, T > 1 flattens it;
2. top-k:           keep the k largest logits, set the rest to -inf (Fan et al., 2018);
3. top-p (nucleus): sort by probability, keep the smallest prefix whose mass reaches p
   (always at least the most likely token) (Holtzman et al., 2019, "The Curious Case of
   Neural Text Degeneration", arXiv:1904.09751);

then renormalize and draw with ``torch.multinomial``. The softmax is our own (max-subtracted,
so stable for large logits).

    >>> logits = torch.tensor([2.0, 1.0, 0.0])
    >>> int(sample_next_token(logits, temperature=0.0))
    0
    >>> _filter_top_p(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 0.75).isfinite()
    tensor([[ True,  True, False, False]])
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmforge.model.layers import softmax

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

EOS_TOKEN = b"<|endoftext|>"


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError for temperature < 0, top_k < 1 or top_p outside (0, 1]."""
    if not (isinstance(temperature, int | float) and 0 <= temperature < math.inf):
        raise ValueError(
            f"temperature must be a finite number >= 0, got {temperature!r}; "
            "use 0 for greedy decoding or e.g. 0.8 for sampling"
        )
    if top_k is not None and not (_is_int(top_k) and top_k >= 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}; None keeps all tokens")
    if top_p is not None and not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(
            f"top_p must be in (0, 1] or None, got {top_p!r}; e.g. 0.9 keeps the tokens making up "
            "90% of the probability mass, None or 1.0 keeps all"
        )


def _filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (batch, vocab); the rest become -inf."""
    if k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~keep, -math.inf)


def _filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest most-likely set whose probability mass reaches p; rest become -inf.

    A token is kept when the mass of the tokens ranked strictly above it is still below p, so
    the most likely token is always kept. Ties are broken by the sort order.
    """
    if p >= 1.0:
        return logits
    probs, order = torch.sort(softmax(logits), dim=-1, descending=True)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, order, mass_before < p)
    return logits.masked_fill(~keep, -math.inf)


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the next token from unnormalized ``logits`` of shape (vocab,) or (batch, vocab).

    Returns a LongTensor of shape () for 1-D input, (batch,) for 2-D input. ``temperature=0``
    is greedy (argmax; top-k/top-p are then irrelevant). ``generator`` makes draws reproducible.

        >>> g = torch.Generator().manual_seed(0)
        >>> sample_next_token(torch.tensor([[0.0, 5.0], [9.0, 0.0]]), top_k=1, generator=g)
        tensor([1, 0])
    """
    _check_sampling(temperature, top_k, top_p)
    if logits.ndim not in (1, 2) or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor of shape (vocab,) or (batch, vocab), got "
            f"{tuple(logits.shape)} {logits.dtype}; take the last position: logits[:, -1, :]"
        )
    z = logits.float().reshape(-1, logits.shape[-1])
    if temperature == 0:
        token = z.argmax(dim=-1)
    else:
        z = z / temperature
        if top_k is not None:
            z = _filter_top_k(z, top_k)
        if top_p is not None:
            z = _filter_top_p(z, top_p)
        token = torch.multinomial(softmax(z), 1, generator=generator).squeeze(-1)
    return token.reshape(logits.shape[:-1])


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _model_limits(model: nn.Module) -> tuple[int, int | None]:
    """(context_length, vocab_size or None) from ``model.config``."""
    config = getattr(model, "config", None)
    context_length = getattr(config, "context_length", None)
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError(
            "the model must have model.config.context_length (a positive int) so generation "
            "knows how many tokens it can see; build it with TransformerLM.from_config(...)"
        )
    return context_length, getattr(config, "vocab_size", None)


def _as_ids(ids: list[int], vocab_size: int | None) -> list[int]:
    """``ids`` as Python ints, checked to lie in [0, vocab_size)."""
    try:
        ids = [operator.index(i) for i in ids]
    except TypeError:
        raise ValueError("prompt_ids must be integer token ids (a list of int)") from None
    bad = [i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)]
    if bad:
        raise ValueError(
            f"prompt_ids holds ids outside [0, {vocab_size}): {bad[:5]}; encode the prompt with "
            "the tokenizer the model was trained with"
        )
    return ids


def generate_ids(
    model: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after ``prompt_ids``, one at a time.

    Each step feeds the last ``model.config.context_length`` tokens (prompt + generated so far)
    to the model on its own device, in eval mode under ``torch.inference_mode()``, and samples
    from the last position's logits (see ``sample_next_token``). Stops early when ``eos_id`` is
    drawn; the eos token itself is NOT yielded. ``seed`` fixes the draws. Arguments are checked
    at the call, before the first token is requested.
    """
    _check_sampling(temperature, top_k, top_p)
    if not (_is_int(max_new_tokens) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    context_length, vocab_size = _model_limits(model)
    prompt_ids = _as_ids(prompt_ids, vocab_size)
    if not prompt_ids:
        raise ValueError(
            "prompt_ids is empty; start from at least one token, e.g. [eos_id] for an "
            "unconditional sample"
        )
    device = _model_device(model)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    window = torch.tensor([prompt_ids[-context_length:]], dtype=torch.long, device=device)
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    return _generate_loop(model, window, max_new_tokens, context_length, eos_id, sample)


def _generate_loop(
    model: nn.Module,
    window: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    eos_id: int | None,
    sample: dict,
) -> Iterator[int]:
    """The token loop of ``generate_ids``; ``window`` is (1, <= context_length) on the device."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            token = _step(model, window, sample)
            if token == eos_id:
                return
            yield token
            nxt = torch.tensor([[token]], dtype=torch.long, device=window.device)
            window = torch.cat([window, nxt], dim=1)[:, -context_length:]
    finally:
        model.train(was_training)


@torch.inference_mode()
def _step(model: nn.Module, window: torch.Tensor, sample: dict) -> int:
    """One forward pass over ``window`` (1, seq) and one draw from the last position."""
    logits = model(window)[0, -1]
    return int(sample_next_token(logits, **sample))


def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    *,
    stop_at_eos: bool = True,
    seed: int | None = None,
    stream: Callable[[str], None] | None = None,
    stop: Sequence[str] = (),
) -> str:
    """Continue ``prompt`` with up to ``max_new_tokens`` tokens; return the new text only.

    ``tokenizer`` is an ``lmforge.tokenizer.Tokenizer``. Decoding is incremental
    (``tokenizer.stream_decoder()``): ``stream(piece)`` is called for each non-empty piece of
    complete UTF-8 characters as soon as it exists, and the pieces concatenate to the returned
    text. Generation stops at ``<|endoftext|>`` when ``stop_at_eos`` (the eos is not part of the
    text). An empty prompt starts from the ``<|endoftext|>`` token (a document boundary), so
    the model writes the opening of a new document. Generation also ends at the first
    occurrence of any ``stop`` string, which is cut off (with what follows it); while a stop
    string may still be forming, the text that could be its beginning is held back from
    ``stream``.
    """
    eos_id = tokenizer.id_of(EOS_TOKEN)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        if eos_id is None:
            raise ValueError(
                "the prompt is empty and the tokenizer has no <|endoftext|> token to start "
                "from; give a non-empty prompt"
            )
        prompt_ids = [eos_id]
    ids = generate_ids(
        model,
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id if stop_at_eos else None,
        seed=seed,
    )
    out = _StopStrings(stop, stream)
    decoder = tokenizer.stream_decoder()
    for token in ids:
        if out.add(decoder.feed(token)):
            return out.text
    out.add(decoder.flush())
    return out.finish()


class _StopStrings:
    """Accumulates decoded text, cuts it at the first stop string, streams what is final.

    >>> s = _StopStrings(["::"], None); s.add("ab:"), s.add(":cd"), s.text
    (False, True, 'ab')
    """

    def __init__(self, stop: Sequence[str], stream: Callable[[str], None] | None):
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop, self.stream = list(stop), stream
        self.text, self.sent = "", 0

    def add(self, piece: str) -> bool:
        """Append `piece`; True when a stop string has appeared (the text is then final)."""
        self.text += piece
        cuts = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self._send(len(self.text))
            return True
        held = max((_overlap(self.text, s) for s in self.stop), default=0)
        self._send(len(self.text) - held)
        return False

    def finish(self) -> str:
        self._send(len(self.text))
        return self.text

    def _send(self, end: int) -> None:
        if self.stream is not None and end > self.sent:
            self.stream(self.text[self.sent : end])
        self.sent = max(self.sent, end)


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
