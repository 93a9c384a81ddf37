"""Speculative decoding: a small draft model proposes, the target model verifies in one pass.

What: `speculative_generate(target, draft, prompt_ids, max_new_tokens, k=4, temperature=1.0)`
continues one prompt (batch size 1) with tokens distributed EXACTLY as sampling from `target`
alone at that temperature (greedy at temperature 0), usually with fewer target forward passes:
each round costs k cheap draft steps and one target pass over k + 1 tokens, and yields between
1 and k + 1 tokens. Both models must share the vocabulary (same tokenizer).

How (Leviathan et al. 2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318), per round:

1. the draft samples x_1..x_k autoregressively from q_i = softmax(draft logits / T), using its
   own KV cache;
2. the target scores [last token, x_1..x_k] in ONE cached forward pass: p_1..p_{k+1}, where p_i
   is its distribution for the position of x_i (p_{k+1} for the token after x_k);
3. modified rejection sampling: accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), in
   order; at the first rejection i, sample the replacement from normalize(max(0, p_i - q_i))
   and stop; if all k are accepted, sample a bonus token from p_{k+1}. Each emitted token is then
   exactly p-distributed given its prefix (the accepted mass min(p, q) plus the residual
   max(0, p - q) sum to p). At temperature 0, x_i is the draft's argmax, accepted iff it equals
   the target's argmax, and the replacement / bonus is the target's argmax: the output is the
   target's greedy output (up to last-bit rounding of the cached pass, see `batch`);
4. both caches roll back the rejected tokens (`KVCache.truncate`).

Cache bookkeeping: between rounds both caches hold all tokens but the last (prompt + output),
whose keys/values the next pass computes. The draft cache may lag one token further (after an
all-accepted round it never saw x_k), so its first step feeds every token it is missing (1 or
2). Rounds shrink k near `max_new_tokens` so exactly that many tokens can come out; the last
token of a round with k = 0 is drawn from the target alone. Prompts follow the rule of
`lmforge.infer.prompts` for both models (a prompt leaving no room in the smaller context is
refused; the output stops at the end of that context, as every generation does), so the caches,
prefilled with `lmforge.infer.loop.prefill`, hold len(prompt) + max_new_tokens - 1 slots within
both contexts. The draft's tokens are drawn by `lmforge.infer.sampling.sample_next_token`.

Statistics: `proposed` counts draft tokens put to the target, `accepted` those accepted (the
tokens of a round are counted even when an eos among them ends the output early);
acceptance_rate = accepted / proposed (0.0 when nothing was proposed). With draft == target
every proposal is accepted (p / q = 1 > u for u ~ U[0, 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.errors import InvalidArgument
from lmforge.infer.fast_decode import decode_step_for
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.loop import decoder, prefill
from lmforge.infer.prompts import check_prompts, model_device, model_limits
from lmforge.infer.sampling import check_sampling, is_int, sample_next_token
from lmforge.model.layers import softmax


@dataclass
class SpeculativeResult:
    """New token ids (eos excluded) and draft statistics (see the module notes)."""

    token_ids: list[int]
    proposed: int
    accepted: int
    acceptance_rate: float


def verify_draft(
    target_logits: Tensor,
    draft_logits: Tensor,
    draft_tokens: Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Modified rejection sampling of one round; returns (accepted count j, next token).

    `target_logits` (k + 1, vocab): the target's logits at the positions of x_1..x_k and the one
    after; `draft_logits` (k, vocab): the draft's logits x_i was drawn from (at `temperature`);
    `draft_tokens` (k,) int64: x_1..x_k, all on the target's device (as `generator`). The round
    emits draft_tokens[:j] followed by the returned token (a correction if j < k, else a bonus).
    """
    k = draft_tokens.shape[0]
    if target_logits.shape[0] != k + 1 or draft_logits.shape[0] != k:
        raise ValueError(
            f"verify_draft needs k + 1 target rows and k draft rows for k={k} draft tokens, got "
            f"{target_logits.shape[0]} and {draft_logits.shape[0]}"
        )
    rows = torch.arange(k, device=draft_tokens.device)
    if temperature == 0:
        best = target_logits.argmax(dim=-1)  # (k + 1,)
        accept = draft_tokens == best[:k]
    else:
        p = softmax(target_logits.float() / temperature)  # (k + 1, vocab)
        q = softmax(draft_logits.float().to(p.device) / temperature)  # (k, vocab)
        u = torch.rand(k, generator=generator, device=p.device)
        # u < p(x) / q(x), without dividing; q(x) > 0 since x was drawn from q.
        accept = u * q[rows, draft_tokens] < p[rows, draft_tokens]
    rejected = (~accept).nonzero()
    j = int(rejected[0, 0]) if rejected.numel() else k
    if temperature == 0:
        return j, int(best[j])
    dist = p[j]
    if j < k:
        residual = (p[j] - q[j]).clamp(min=0)
        # All-zero only if p == q up to rounding, where rejection has probability ~0: use p.
        if float(residual.sum()) > 0:
            dist = residual / residual.sum()
    return j, int(torch.multinomial(dist, 1, generator=generator))


class _Feeder:
    """Runs tokens through one cached model: logits (len(tokens), vocab) of its one sequence.

    Both models take the lean packed-weight step of `lmforge.infer.fast_decode`, as plain
    decoding does, resolved once per generation: one token (the draft's steps) its decode
    step, several (the target's verification pass) its eager `extend`.
    """

    def __init__(self, model: nn.Module, cache: KVCache, compile: bool):
        self.model, self.cache, self.device = model, cache, model_device(model)
        self.step = decoder(model, compile)
        self.packed = decode_step_for(model, compile)

    def __call__(self, tokens: list[int]) -> Tensor:
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        if len(tokens) == 1:
            return self.step(self.cache, ids)
        if self.packed is None:
            return self.model(ids[None], kv_cache=self.cache)[0]
        return self.packed.extend(self.cache, ids[None])[0]


def _check(
    target: nn.Module, draft: nn.Module, prompt_ids, max_new_tokens: int, k: int
) -> tuple[list[int], int]:
    """(prompt ids, new-token budget) under the prompt rule of `lmforge.infer.prompts` for both
    models; ValueError for a bad k, prompt or budget, or mismatched vocabularies."""
    if not (is_int(k) and k >= 1):
        raise InvalidArgument(f"k (draft tokens per round) must be an int >= 1, got {k!r}; e.g. 4")
    vocab_t = getattr(getattr(target, "config", None), "vocab_size", None)
    vocab_d = getattr(getattr(draft, "config", None), "vocab_size", None)
    if vocab_t != vocab_d:
        raise InvalidArgument(
            f"the target's vocab_size={vocab_t} differs from the draft's vocab_size={vocab_d}; "
            "speculative decoding needs a draft trained with the same tokenizer"
        )
    prompts, budgets = check_prompts([prompt_ids], max_new_tokens, [target, draft])
    return prompts[0], budgets[0]


def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    k: int = 4,
    temperature: float = 1.0,
    eos_id: int | None = None,
    seed: int | None = None,
    compile: bool = False,
) -> SpeculativeResult:
    """Continue `prompt_ids` with up to `max_new_tokens` tokens from `target`, drafted by `draft`.

    Output is distributed as `target` sampled at `temperature` (0 = greedy) and stops before
    `eos_id` (not included) or at the end of the smaller context. `seed` fixes the draws.
    `compile=True` runs both models' one-token steps under `torch.compile` (see
    `lmforge.infer.fast_decode`; the first call compiles, tens of seconds). Both models run in
    eval mode under `torch.inference_mode()`; see the module notes for the algorithm and the
    statistics.
    """
    check_sampling(temperature, seed=seed)
    prompt, max_new_tokens = _check(target, draft, prompt_ids, max_new_tokens, k)
    if max_new_tokens == 0:
        return SpeculativeResult([], 0, 0, 0.0)
    generators: dict[torch.device, torch.Generator] = {}
    if seed is not None:
        for device in {model_device(target), model_device(draft)}:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
    modes = (target.training, draft.training)
    target.eval()
    draft.eval()
    try:
        with torch.inference_mode():
            return _run(target, draft, prompt, max_new_tokens, k, temperature, eos_id, generators,
                        compile)
    finally:
        target.train(modes[0])
        draft.train(modes[1])


def _run(
    target: nn.Module,
    draft: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    k: int,
    temperature: float,
    eos_id: int | None,
    generators: dict[torch.device, torch.Generator],
    compile: bool,
) -> SpeculativeResult:
    """The draft / verify / roll-back loop (see the module notes)."""
    def cache(model: nn.Module) -> KVCache:
        """The model's cache holding all prompt tokens but the last."""
        # A compiled step compiles once per cache shape: then the cache spans the whole context.
        max_len = model_limits(model)[0] if compile else len(prompt) + max_new_tokens - 1
        if len(prompt) == 1:
            return KVCache.for_model(model, 1, max_len)
        return prefill(model, [prompt[:-1]], max_len)[0]

    tcache, dcache = cache(target), cache(draft)
    t_device, d_device = model_device(target), model_device(draft)
    feed_target, feed_draft = _Feeder(target, tcache, compile), _Feeder(draft, dcache, compile)
    tokens = list(prompt)
    out: list[int] = []
    proposed = accepted = 0
    while len(out) < max_new_tokens:
        k_round = min(k, max_new_tokens - len(out) - 1)
        proposals, draft_rows = [], []
        if k_round:
            logits = feed_draft(tokens[int(dcache.lengths[0]) :])[-1]
            for i in range(k_round):
                draft_rows.append(logits)
                x = int(sample_next_token(logits, temperature=temperature,
                                          generator=generators.get(d_device)))
                proposals.append(x)
                if i < k_round - 1:
                    logits = feed_draft([x])[-1]
        target_logits = feed_target([tokens[-1], *proposals])  # (k_round + 1, vocab)
        vocab = target_logits.shape[-1]
        draft_logits = torch.stack(draft_rows) if draft_rows else target_logits.new_zeros(0, vocab)
        j, nxt = verify_draft(
            target_logits,
            draft_logits.to(t_device),
            torch.tensor(proposals, dtype=torch.long, device=t_device),
            temperature,
            generators.get(t_device),
        )
        proposed, accepted = proposed + k_round, accepted + j
        new = [*proposals[:j], nxt]
        tokens += new
        tcache.truncate([len(tokens) - 1])
        dcache.truncate([min(int(dcache.lengths[0]), len(tokens) - 1)])
        if eos_id is not None and eos_id in new:
            out += new[: new.index(eos_id)]
            break
        out += new
    rate = accepted / proposed if proposed else 0.0
    return SpeculativeResult(out, proposed, accepted, rate)
