"""Autoregressive text generation, streamed: `generate` (text in, text out) and `generate_ids`.

What: turn a language model into a stream of new tokens. ``generate_ids`` yields token ids one
at a time; ``generate`` wraps it with a tokenizer, streaming decoded text as it is produced and
ending at ``<|endoftext|>`` or a stop string.

How: both run the one KV-cached loop of every entry point (`lmforge.infer.loop.token_loop`: a
prefill of the prompt, then one packed-weight decode step per token), choosing tokens with
`lmforge.infer.sampling` (temperature, top-k, top-p; greedy at temperature 0), under the prompt
rule of `lmforge.infer.prompts`: a prompt of ``context_length`` tokens or more is refused, and
generation ends at the end of the context even if ``max_new_tokens`` asks for more. Greedy
tokens and seeded samples are those of the old recompute-the-window loop (a test reference now)
for every generation that fits in the context.

    >>> from lmforge.model import TransformerLM
    >>> model = TransformerLM(16, 8, 16, 1, 2)
    >>> len(list(generate_ids(model, [1, 2, 3], max_new_tokens=100, temperature=0)))
    5
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmforge import ENDOFTEXT
from lmforge.errors import InvalidArgument
from lmforge.infer.loop import Generation, token_loop
from lmforge.infer.prompts import check_prompt, model_device, model_limits
from lmforge.infer.sampling import SamplingSettings, check_sampling

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

__all__ = ["EOS_TOKEN", "StopStrings", "generate", "generate_ids"]

EOS_TOKEN = ENDOFTEXT.encode()  # the end-of-text token, as the tokenizer's bytes


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
) -> Generator[int, None, None]:
    """Yield up to ``max_new_tokens`` new token ids after ``prompt_ids``, one at a time.

    The model runs on its own device with a KV cache, in eval mode, each step under
    ``torch.inference_mode()``; tokens are drawn as by ``sample_next_token``. Stops early when
    ``eos_id`` is drawn (the eos token itself is NOT yielded) and at the end of the model's
    context (at most ``context_length - len(prompt_ids)`` tokens). ``seed`` fixes the draws.
    Arguments are checked at the call, before the first token is requested: ValueError for
    bad settings, or a prompt that is empty, out of the vocabulary or leaves no room in the
    context (see `lmforge.infer.prompts`).
    """
    settings = SamplingSettings(temperature, top_k, top_p)
    check_sampling(seed=seed)
    context_length, vocab_size = model_limits(model)
    prompt_ids, budget = check_prompt(prompt_ids, max_new_tokens, context_length, vocab_size)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    stops = () if eos_id is None else (eos_id,)
    steps = token_loop(model, [prompt_ids], [budget], settings, [Generation()], stops=stops,
                       generator=generator, logprobs=False)
    return _tokens(steps)


def _tokens(
    steps: Generator[list[tuple[int, int]], None, None],
) -> Generator[int, None, None]:
    """The tokens of a one-prompt `token_loop`; closing this closes the loop (and so restores
    the model's training mode) at once."""
    try:
        for added in steps:
            for _, token in added:
                yield token
    finally:
        steps.close()


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
    text), and at the end of the model's context (see ``generate_ids``). An empty prompt
    starts from the ``<|endoftext|>`` token (a document boundary), so the model writes the
    opening of a new document. Generation also ends at the first
    occurrence of any ``stop`` string, which is cut off (with what follows it); while a stop
    string may still be forming, the text that could be its beginning is held back from
    ``stream``.
    """
    eos_id = tokenizer.id_of(EOS_TOKEN)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        if eos_id is None:
            raise InvalidArgument(
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
    out = StopStrings(stop, stream)
    decoder = tokenizer.stream_decoder()
    try:
        for token in ids:
            if out.add(decoder.feed(token)):
                return out.text
    finally:
        ids.close()
    out.add(decoder.flush())
    return out.finish()


class StopStrings:
    """Accumulates decoded text, cuts it at the first stop string, streams what is final.

    >>> s = StopStrings(["::"], None); s.add("ab:"), s.add(":cd"), s.text
    (False, True, 'ab')
    """

    def __init__(self, stop: Sequence[str], stream: Callable[[str], None] | None):
        if any(not s for s in stop):
            raise InvalidArgument("stop strings must be non-empty")
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
