"""Batched scoring of token windows, computing shared prefixes once (the engine of `scoring`).

A `TokenWindow` is what the model reads plus one token: `seq` (at most context_length + 1 ids);
the model reads seq[:-1], and its last `scored` tokens are scored, seq[j] by the logits at
position j - 1. `score_windows` returns a `TokenScore` (Σ log p in nats, all-argmax) for each.

How (lm-eval recomputes every request in full; this computes each shared prefix once):

1. windows that read the same tokens share one row: the choices " A".." D" of a question (one
   token each) are all scored from one forward pass of its context;
2. rows are sorted by their tokens, so rows with a common prefix are neighbours; runs of
   rows sharing a long prefix (an MMLU subject's questions after its few-shot prompt) are cut
   into chunks of their own of at most `batch_size` rows, the rest into chunks by size
   (`chunk_rows`);
3. a chunk runs in up to three stages on the KV cache (`lmforge.infer.loop.extend`):
      a. the prefix common to the whole chunk (or its run), at batch 1 — computed once for all
         chunks of a run (`PrefixMemo`);
      b. copied (`KVCache.take`) to each group of neighbours sharing more (e.g. a question
         with several multi-token answers), which extends it by the group's shared part;
      c. each row runs only the rest of its tokens: after stage a alone, every row reads the
         one prefix in place (`SharedPrefixKVCache`, attention by
         `lmforge.model.attention.prefix_attention`: no per-row copy of 2 · layers · prefix ·
         d_model elements); after stage b from a copy of its group's cache;
   or, when nothing is worth sharing, in plain forward passes without a cache. The plan
   (`plan_chunk`) with the fewest padded tokens + `FORWARD_COST` per pass wins; rows are cut
   into passes by length (`length_passes`) so that short rows are not padded to long ones; a
   prefix never reaches a row's scored positions (they need their own hidden states);
4. the output layer runs only at scored positions, `LOGIT_SLICE` logits at a time: log p =
   z - logsumexp(z) in float32, summed over a window in float64.

Scores equal scoring each window alone with a full forward pass (tested to 1e-5 in float32):
attending to cached keys is the computation the full pass does, up to rounding. Memory: a
chunk's cache, 2 · layers · batch_size · (longest row) · kv heads · head_dim elements.
Measured (CPU, 4-layer d_model 128 model, 5-shot MMLU anatomy, 40 questions × 4 choices,
batch 32): 12x faster than one padded full forward per batch of requests, max |Δ| 1.4e-6.

    >>> from lmforge.model import TransformerLM
    >>> m = TransformerLM(16, 8, 16, 1, 2)
    >>> a, b = score_windows(m, [TokenWindow((1, 2, 3), 2), TokenWindow((1, 2, 4), 1)])
    >>> a.logprob < b.logprob < 0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from lmforge.errors import InvalidArgument
from lmforge.infer.kv_cache import KVCache, SharedPrefixKVCache
from lmforge.infer.loop import extend
from lmforge.infer.prompts import model_device
from lmforge.infer.sampling import is_int
from lmforge.model import TransformerLM

FORWARD_COST = 32  # the fixed cost of one forward pass, in padded tokens (a planning heuristic)
LOGIT_SLICE = 1 << 24  # logits materialised at once (64 MiB in float32)


@dataclass(frozen=True)
class TokenWindow:
    """Tokens read by the model, plus the last target: read seq[:-1], score seq[-scored:]."""

    seq: tuple[int, ...]  # at most context_length + 1 ids
    scored: int  # how many of the last tokens are scored (0 <= scored < len(seq))
    truncated: bool = False  # tokens were cut from the left to fit (reported, not used here)


@dataclass(frozen=True)
class TokenScore:
    logprob: float  # Σ log p(scored tokens), nats
    is_greedy: bool  # every scored token is the argmax at its position


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix. >>> common_prefix([1, 2, 3], [1, 2, 5]) -> 2"""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Plan:
    """How one chunk of rows runs (see the module notes): stage a caches `prefix` tokens,
    stage b extends one copy per group, stage c runs each row from `offsets[r]` (its cached
    length) in one forward pass per list of rows in `passes`."""

    prefix: int  # stage a's length (0: no stage a)
    groups: list[tuple[int, int, int]]  # stage b: (first row, end row, shared length); [] = none
    offsets: list[int]  # where each row's own tokens start
    passes: list[list[int]]  # stage c's passes (rows); offsets all 0: plain passes, no cache
    cost: int  # padded tokens run + FORWARD_COST per pass


def plan_chunk(inputs: list[tuple[int, ...]], caps: list[int], cached: int = 0) -> Plan:
    """The cheapest plan for sorted `inputs`; `caps[r]`: the longest prefix of row r that may be
    cached (its scored positions need their own hidden states); `cached`: the length of a prefix
    of every row computed once for several chunks (`chunk_rows`, `PrefixMemo`), priced at 0.

    >>> shots = tuple(range(40))  # 40 tokens shared, then one of each row's own
    >>> plan_chunk([shots + (1,), shots + (2,)], [40, 40])
    Plan(prefix=40, groups=[], offsets=[40, 40], passes=[[0, 1]], cost=106)
    >>> plan_chunk([(1, 2, 3, 4), (1, 2, 3, 5)], [3, 3]).offsets  # too little to share
    [0, 0]
    """
    k, longest = len(inputs), max(map(len, inputs))
    passes, cost = length_passes([len(x) for x in inputs])
    plans = [Plan(0, [], [0] * k, passes, cost)]
    p0 = min(common_prefix(inputs[0], inputs[-1]), *caps) if k > 1 else 0
    if p0 > 0:
        passes, cost = length_passes([len(x) - p0 for x in inputs])
        plans.append(Plan(p0, [], [p0] * k, passes, p0 + FORWARD_COST + cost))
    if 0 < cached <= min(caps):
        passes, cost = length_passes([len(x) - cached for x in inputs])
        plans.append(Plan(cached, [], [cached] * k, passes, cost))
    adjacent = [common_prefix(inputs[j], inputs[j + 1]) for j in range(k - 1)]
    groups, start = [], 0
    for j in range(1, k + 1):
        if j == k or adjacent[j - 1] <= p0:
            if j - start > 1 and (shared := min(*adjacent[start : j - 1], *caps[start:j])) > p0:
                groups.append((start, j, shared))
            start = j
    if groups:
        offsets = [p0] * k
        for a, b, shared in groups:
            offsets[a:b] = [shared] * (b - a)
        passes = _passes(inputs, offsets, longest)
        cost = (p0 + FORWARD_COST * (2 + len(passes)) + len(groups) * max(
            s - p0 for _, _, s in groups) + sum(len(rows) * max(
                len(inputs[r]) - offsets[r] for r in rows) for rows in passes))
        plans.append(Plan(p0, groups, offsets, passes, cost))
    return min(plans, key=lambda p: p.cost)


def _passes(inputs: list[tuple[int, ...]], offsets: list[int], longest: int) -> list[list[int]]:
    """Rows cut into passes whose cache fits: a pass writes slots up to max(offset) + max(own
    tokens), which must stay within `longest` (the cache's size, at most the context)."""
    passes: list[list[int]] = []
    top = rest = 0
    for r in sorted(range(len(inputs)), key=lambda r: -offsets[r]):
        own = len(inputs[r]) - offsets[r]
        if passes and top + max(rest, own) <= longest:
            passes[-1].append(r)
            rest = max(rest, own)
        else:
            passes.append([r])
            top, rest = offsets[r], own
    return passes


def length_passes(lengths: list[int]) -> tuple[list[list[int]], int]:
    """Rows (by their own token counts) cut into forward passes, padding each to its longest
    row, with the least padded tokens + `FORWARD_COST` per pass (exact: a partition of the rows
    sorted by length, by dynamic programming over its cut points). Returns (passes, cost).

    >>> length_passes([100, 3, 98, 2])  # two long rows, two short: padding 2 rows to 100 costs more
    ([[0, 2], [1, 3]], 270)
    >>> length_passes([5, 4, 3])  # one pass: 15 padded tokens + 32
    ([[0, 1, 2]], 47)
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    n = len(order)
    best = [0] + [0] * n  # best[j]: cheapest cost of the first j rows (longest first)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = min((best[i] + (j - i) * lengths[order[i]] + FORWARD_COST, i)
                              for i in range(j))
    passes, j = [], n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1], best[n]


def chunk_rows(inputs: list[tuple[int, ...]], batch_size: int) -> list[tuple[range, int]]:
    """Sorted rows cut into chunks of at most `batch_size` consecutive rows, each with the length
    of a prefix it shares with the chunks around it (0: none), to be computed once for them.

    Runs of rows sharing at least `FORWARD_COST` tokens (an MMLU subject's questions after its
    few-shot prompt) get chunks of their own, all continuing the run's common prefix; a run ends
    where the next row would cut that prefix to less than half. The rows in between (sharing
    little) are chunked together by size.

    >>> a = [(1,) * 40 + (2, i) for i in range(3)] + [(3,) * 40 + (4, i) for i in range(3)]
    >>> chunk_rows(a, 32)
    [(range(0, 3), 41), (range(3, 6), 41)]
    >>> chunk_rows(a, 2)
    [(range(0, 2), 41), (range(2, 3), 41), (range(3, 5), 41), (range(5, 6), 41)]
    """
    runs: list[tuple[int, int, int]] = []  # (start, end, shared prefix); singletons share 0
    start, shared = 0, 0
    for j in range(1, len(inputs) + 1):
        if j < len(inputs):
            now = common_prefix(inputs[j - 1], inputs[j])
            now = now if j - start == 1 else min(now, shared)
            if now >= FORWARD_COST and (j - start == 1 or 2 * now >= shared):
                shared = now
                continue
        runs.append((start, j, shared if j - start > 1 else 0))
        start, shared = j, 0
    chunks: list[tuple[range, int]] = []
    loose: list[int] = []  # consecutive rows of singleton runs, batched together

    def flush() -> None:
        for a in range(0, len(loose), batch_size):
            part = loose[a : a + batch_size]
            chunks.append((range(part[0], part[-1] + 1), 0))
        loose.clear()

    for a, b, prefix in runs:
        if prefix == 0:
            loose.extend(range(a, b))
            continue
        flush()
        chunks += [(range(c, min(c + batch_size, b)), prefix) for c in range(a, b, batch_size)]
    flush()
    return chunks


def score_windows(
    model: nn.Module,
    windows: Sequence[TokenWindow],
    *,
    batch_size: int = 32,
    progress: Callable[[int], object] | None = None,
) -> list[TokenScore]:
    """Score every window (see the module notes); `progress(n)` is called as n windows finish.
    The model runs in eval mode under `torch.inference_mode()`; its mode is restored after."""
    if not (is_int(batch_size) and batch_size >= 1):
        raise InvalidArgument(f"batch_size must be an int >= 1, got {batch_size!r}")
    rows: dict[tuple[int, ...], list[int]] = {}  # input tokens -> the windows reading them
    for i, w in enumerate(windows):
        if w.scored > 0:
            rows.setdefault(w.seq[:-1], []).append(i)
    order = sorted(rows)
    device = model_device(model)
    totals = torch.zeros(len(windows), dtype=torch.float64, device=device)
    misses = torch.zeros(len(windows), dtype=torch.long, device=device)
    if progress is not None:
        progress(len(windows) - sum(map(len, rows.values())))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            prefixes = PrefixMemo()
            for span, shared in chunk_rows(order, batch_size):
                inputs = order[span.start : span.stop]
                chunk = [[windows[i] for i in rows[x]] for x in inputs]
                _score_chunk(model, inputs, chunk, [rows[x] for x in inputs], totals, misses,
                             prefixes, shared)
                if progress is not None:
                    progress(sum(map(len, chunk)))
    finally:
        model.train(was_training)
    return [TokenScore(t, m == 0) for t, m in zip(totals.tolist(), misses.tolist(),
                                                    strict=True)]


def _score_chunk(model: nn.Module, inputs: list[tuple[int, ...]],
                 chunk: list[list[TokenWindow]], ids: list[list[int]], totals: Tensor,
                 misses: Tensor, prefixes: PrefixMemo, shared: int = 0) -> None:
    """Run one chunk of rows (`inputs`, each read by the windows `chunk[r]`, numbered
    `ids[r]`) and add each window's log-prob and argmax misses into `totals` / `misses`;
    `shared`: the length of a prefix of every row computed once for its run (`chunk_rows`)."""
    lm = cast(TransformerLM, model)
    need = [max(w.scored for w in ws) for ws in chunk]
    plan = plan_chunk(inputs, [len(x) - n for x, n in zip(inputs, need, strict=True)], shared)
    for rows, hidden in _hidden(lm, inputs, plan, prefixes, need):  # (rows, max need, d_model)
        # The scored positions of each row, flattened, then (position, target, window) triples.
        row_idx: list[int] = []
        pos_idx: list[int] = []
        pos: list[int] = []
        target: list[int] = []
        owner: list[int] = []
        for n, r in enumerate(rows):
            base = len(row_idx)
            row_idx += [n] * need[r]
            pos_idx += range(need[r])
            for w, i in zip(chunk[r], ids[r], strict=True):
                pos += range(base + need[r] - w.scored, base + need[r])
                target += w.seq[-w.scored:]
                owner += [i] * w.scored
        device = hidden.device
        h = hidden[torch.tensor(row_idx, device=device), torch.tensor(pos_idx, device=device)]
        logprob, hit = _target_logprobs(lm, h, torch.tensor(pos, device=device),
                                        torch.tensor(target, device=device))
        owner_t = torch.tensor(owner, device=device)
        totals.index_add_(0, owner_t, logprob.double())
        misses.index_add_(0, owner_t, (~hit).long())


def _target_logprobs(lm: TransformerLM, h: Tensor, pos: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(target) (n,), target is the argmax (n,)) at hidden states h[pos] (h: (positions,
    d_model)), running the output layer on `LOGIT_SLICE` logits at a time."""
    logprob = torch.empty(len(pos), device=h.device)
    hit = torch.empty(len(pos), dtype=torch.bool, device=h.device)
    step = max(1, LOGIT_SLICE // lm.config.vocab_size)
    for a in range(0, h.shape[0], step):
        z = lm.lm_head(h[a : a + step]).float()  # (positions, vocab)
        sel = ((pos >= a) & (pos < a + step)).nonzero().squeeze(-1)
        local, t = pos[sel] - a, target[sel]
        logprob[sel] = z[local, t] - torch.logsumexp(z, dim=-1)[local]
        hit[sel] = z.argmax(dim=-1)[local] == t
    return logprob, hit


class PrefixMemo:
    """The last shared prefix computed (its tokens and batch-1 cache), so consecutive chunks
    continuing the same prefix (a subject with more questions than a batch) compute it once."""

    def __init__(self) -> None:
        self.tokens: tuple[int, ...] = ()
        self.cache: KVCache | None = None

    def get(self, lm: TransformerLM, tokens: tuple[int, ...]) -> KVCache:
        if self.cache is None or tokens != self.tokens:
            self.cache = KVCache.for_model(lm, 1, len(tokens))
            extend(lm, self.cache, [list(tokens)])
            self.tokens = tokens
        return self.cache


def _hidden(lm: TransformerLM, inputs: list[tuple[int, ...]], plan: Plan, prefixes: PrefixMemo,
            need: list[int]) -> Iterator[tuple[list[int], Tensor]]:
    """For each pass of `plan`: its rows and the final hidden states (rows, max need, d_model)
    of the last need[r] positions of each row r (row r's at [:need[r]]); the model's last
    block computes only those positions (`TransformerLM.hidden_states(keep=...)`)."""
    device = model_device(lm)

    def keep(rows: list[int]) -> Tensor:
        n = max(need[r] for r in rows)
        ends = [len(inputs[r]) - plan.offsets[r] for r in rows]
        return torch.tensor([[e - need[r] + min(j, need[r] - 1) for j in range(n)]
                             for r, e in zip(rows, ends, strict=True)], device=device)

    if not any(plan.offsets):  # nothing shared: plain passes, no cache
        for rows in plan.passes:
            longest = max(len(inputs[r]) for r in rows)
            ids = [list(inputs[r]) + [0] * (longest - len(inputs[r])) for r in rows]
            yield rows, lm.hidden_states(torch.tensor(ids, device=device), keep=keep(rows))
        return
    if not plan.groups:  # one prefix for every row: held once, read by prefix attention
        prefix = prefixes.get(lm, inputs[0][: plan.prefix])
        for rows in plan.passes:
            own = [list(inputs[r][plan.prefix:]) for r in rows]
            rest = SharedPrefixKVCache(prefix, len(rows), plan.prefix + max(map(len, own)))
            yield rows, extend(lm, rest, own, keep=keep(rows))[0]
        return
    cache = KVCache.for_model(lm, 1, max(map(len, inputs)))
    if plan.prefix:
        extend(lm, cache, [list(inputs[0][: plan.prefix])])
    bare = len(plan.groups)  # the copy, if needed, that rows outside every group continue
    copies = [bare] * len(inputs)  # the row of `cache` each input continues
    for g, (a, b, _) in enumerate(plan.groups):
        copies[a:b] = [g] * (b - a)
    parts = [list(inputs[a][plan.prefix : s]) for a, _, s in plan.groups]
    if bare in copies:
        parts.append([])
    cache = cache.take([0] * len(parts))
    extend(lm, cache, parts)
    for rows in plan.passes:
        own = [list(inputs[r][plan.offsets[r]:]) for r in rows]
        yield rows, extend(lm, cache.take([copies[r] for r in rows]), own, keep=keep(rows))[0]


def shared_prefix_cache(model: nn.Module, prompts: list[list[int]],
                        max_len: int) -> KVCache | None:
    """For generation: a cache of `max_len` slots with one row per prompt, each holding the
    prefix common to all prompts (at most all but the last token of the shortest), computed
    once at batch 1 and copied (`KVCache.take`): n samples of one prompt, or few-shot prompts
    that differ only in their question. None when sharing would save less than `FORWARD_COST`
    tokens. Pass it to `token_loop(cache=...)`."""
    shared = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        shared = min(shared, common_prefix(prompts[0], p))
    if (len(prompts) - 1) * shared < FORWARD_COST:
        return None
    cache = KVCache.for_model(model, 1, max_len)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            extend(model, cache, [prompts[0][:shared]])
            return cache.take([0] * len(prompts))
    finally:
        model.train(was_training)
