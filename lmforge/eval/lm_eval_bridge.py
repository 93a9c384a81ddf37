"""The lm-evaluation-harness bridge: lmforge models as lm-eval's model type ``lmforge``.

`LmforgeLM` is an `lm_eval.api.model.LM` answering lm-eval's three request types with
`lmforge.eval.scoring` (the KV-cache engine, shared few-shot prefixes computed once):

======================  ========================  ===============================
lm-eval request         `Instance.args`           answered by
======================  ========================  ===============================
loglikelihood           (context, continuation)   `scoring.loglikelihood`
loglikelihood_rolling   (text,)                   `scoring.loglikelihood_rolling`
generate_until          (context, gen_kwargs)     `scoring.generate_until`
======================  ========================  ===============================

Scoring follows lm-eval's `HFLM` token for token (the boundary rule, the left truncation, the
rolling windows, <|endoftext|> as the prefix and the end of a generation), so on a model
exported with `lmforge export hf` the two backends give the same log-likelihoods (to float
rounding) and the same greedy text; tests/eval/test_lm_eval_bridge.py checks both.

Importing this module registers the name (lm-eval 0.4 has no plugin hook for models, no entry
point group: its registry holds its own models and whatever was imported). Hence:

    in Python      import lmforge.eval.lm_eval_bridge  # then
                   lm_eval.simple_evaluate(model="lmforge", model_args={"run": "runs/demo"},
                                           tasks=["hellaswag"])
    on the shell   python -m lmforge.eval.lm_eval_bridge --model lmforge \\
                       --model_args run=runs/demo --tasks hellaswag
                   (lm-eval's own command line, every option of `lm_eval`, after this import)

model_args: ``run`` (a run directory with its tokenizer, or a HuggingFace Llama directory:
`lmforge.eval.models.open_model`), ``device`` (default auto; on the command line it is
lm-eval's ``--device``, whose default cuda:0 falls back to the CPU without a GPU, as for
lm-eval's hf backend), ``batch_size`` (requests per forward pass; "auto" = 32; on the command
line ``--batch_size``).

gen_kwargs of generate_until: ``until`` (str or list), ``max_gen_toks`` (or max_new_tokens /
max_tokens; default 256, HFLM's), ``do_sample`` / ``temperature`` (lm-eval's rule: sampling iff
do_sample, or temperature > 0 when do_sample is not given; do_sample alone samples at
temperature 1), ``seed``; settings lmforge's generate_until does not have (top_p < 1, top_k,
beams, ...) are refused rather than ignored.

lm-eval is an optional dependency (``pip install 'lmforge[eval]'``): only this module imports it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models first: `get_model` skips it otherwise)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lmforge.errors import InvalidArgument
from lmforge.eval.models import open_model
from lmforge.eval.scoring import (
    GenerationRequest,
    generate_until,
    loglikelihood,
    loglikelihood_rolling,
)

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # HFLM's max_gen_toks
_MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
# gen_kwargs lmforge does not implement, with the value at which they change nothing
_NO_OP_GEN_KWARGS: dict[str, tuple[Any, ...]] = {
    "top_p": (None, 1, 1.0), "top_k": (None, 0, -1), "min_p": (None, 0, 0.0),
    "num_beams": (None, 1), "repetition_penalty": (None, 1, 1.0),
}


def parse_batch_size(batch_size: int | str | None) -> int:
    """lm-eval's batch_size argument as an int: a count (int or digits) or "auto[:N]" (32).

    >>> parse_batch_size("8"), parse_batch_size("auto:4"), parse_batch_size(None)
    (8, 32, 32)
    """
    if batch_size is None or str(batch_size).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    if str(batch_size).isdigit() and int(batch_size) >= 1:
        return int(batch_size)
    raise InvalidArgument(f"batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")


def generation_request(context: str, gen_kwargs: dict[str, Any]) -> GenerationRequest:
    """The `GenerationRequest` for one lm-eval generate_until request (see the module notes).

    >>> generation_request("Q:", {"until": ["\\n"], "do_sample": False, "max_gen_toks": 8})
    GenerationRequest(context='Q:', stop=('\\n',), max_tokens=8, temperature=0.0, seed=None)
    """
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None)
    # lm-eval ignores empty stop strings (a seq2seq model's decoded EOS), so do we
    stop = tuple(s for s in ((until,) if isinstance(until, str) else until or ()) if s)
    max_tokens = next((kwargs.pop(k) for k in _MAX_TOKEN_KEYS if kwargs.get(k) is not None),
                      DEFAULT_MAX_GEN_TOKS)
    for k in _MAX_TOKEN_KEYS:
        kwargs.pop(k, None)
    do_sample = kwargs.pop("do_sample", None)
    temperature = kwargs.pop("temperature", None)
    if do_sample is None:
        temperature = float(temperature or 0.0)
    elif do_sample:
        temperature = 1.0 if temperature is None else float(temperature)
    else:
        temperature = 0.0
    seed = kwargs.pop("seed", None)
    unsupported = {k: v for k, v in kwargs.items() if v not in _NO_OP_GEN_KWARGS.get(k, ())}
    if unsupported:
        raise InvalidArgument(
            f"generation setting(s) {unsupported} are not supported by the lmforge model "
            "(it takes until, max_gen_toks, do_sample, temperature and seed); remove them from "
            "the task's generation_kwargs or --gen_kwargs"
        )
    return GenerationRequest(context, stop, int(max_tokens), temperature,
                             None if seed is None else int(seed))


@register_model("lmforge")
class LmforgeLM(LM):
    """An lmforge run as an lm-eval model: ``LmforgeLM(run="runs/demo", device="cpu")``."""

    def __init__(
        self,
        run: str | os.PathLike,
        *,
        device: str = "auto",
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,  # lm-eval passes it for "auto"; unused
        trust_remote_code: bool | None = None,  # the CLI's --trust_remote_code; nothing to trust
    ) -> None:
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line passes --device's default, cuda:0, on every machine; its
            # hf backend then falls back to the CPU, and so does this one.
            warnings.warn(f"device {device} asked for, but torch sees no CUDA GPU; using auto",
                          stacklevel=2)
            device = "auto"
        self.batch_size = parse_batch_size(batch_size)
        self.model, self.tokenizer, self.label = open_model(run, device)
        self._device = next(self.model.parameters()).device

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        """(log p(continuation | context) in nats, is greedy) per `Instance`, in order."""
        pairs = [tuple(r.args) for r in requests]
        scores = loglikelihood(self.model, self.tokenizer, pairs, batch_size=self.batch_size,
                               progress=not disable_tqdm)
        out = [(s.logprob, s.is_greedy) for s in scores]
        for pair, result in zip(pairs, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """log p(text) in nats per `Instance`, every token scored once (lm-eval's windows)."""
        texts = [r.args[0] for r in requests]
        scores = loglikelihood_rolling(self.model, self.tokenizer, texts,
                                       batch_size=self.batch_size, progress=not disable_tqdm)
        for text, s in zip(texts, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), s.logprob)
        return [s.logprob for s in scores]

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """The text generated for each `Instance` before its first stop string."""
        args = [r.args for r in requests]
        gens = [generation_request(context, kwargs) for context, kwargs in args]
        texts = generate_until(self.model, self.tokenizer, gens, batch_size=self.batch_size,
                               progress=not disable_tqdm)
        for a, text in zip(args, texts, strict=True):
            self.cache_hook.add_partial("generate_until", a, text)
        return texts

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records under results["config"]."""
        return {"lmforge_model": self.label,
                "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line (`lm_eval ...`, every option) with the ``lmforge`` model known.

    >>> main(["--model", "lmforge", "--model_args", "run=runs/demo",  # doctest: +SKIP
    ...       "--tasks", "lambada"])
    """
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
