"""Tests for lmforge.infer.speculative: speculative decoding with modified rejection sampling.

References: the uncached recompute loop `reference_generate_ids` (reference_generate.py) at
temperature 0 (greedy output must match token for token); the target's exact next-token
distributions, computed with its uncached forward pass and a softmax at temperature T,
marginalised over every possible prefix by enumeration (vocab 8); hand-computed distributions
for the acceptance rule alone, and the acceptance probability sum_x min(p(x), q(x)) for the
first proposal. Chi-square statistics use the 0.1% critical values of the chi-square
distribution (no scipy here), and every sampling test also checks that the draft's
distribution is REJECTED, so the test can tell a sampler that just follows the draft (e.g.
accept-always) from the exact one.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from lmforge.infer import generate_batch
from lmforge.infer.speculative import speculative_generate, verify_draft
from lmforge.model import TransformerLM
from tests.infer.reference_generate import reference_generate_ids

CHI2_CRIT_DF7 = 24.322  # P(chi2 with 7 degrees of freedom > 24.322) = 0.001
CHI2_CRIT_DF2 = 13.816  # P(chi2 with 2 degrees of freedom > 13.816) = 0.001


def tiny(seed: int, vocab: int = 64, d_model: int = 32, layers: int = 2) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(vocab, 32, d_model, layers, 4)


def perturbed(model: TransformerLM, scale: float, seed: int) -> TransformerLM:
    """A copy of `model` with Gaussian noise on every weight: a draft that often agrees."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def greedy_counts(target, draft, prompt: list[int], n: int, k: int) -> tuple[int, int]:
    """(proposed, accepted) of greedy speculative decoding, replayed with uncached forwards."""

    def argmax(model: TransformerLM, ids: list[int]) -> int:
        with torch.no_grad():
            return int(model(torch.tensor([ids]))[0, -1].argmax())

    tokens, proposed, accepted = list(prompt), 0, 0
    while len(tokens) - len(prompt) < n:
        proposals: list[int] = []
        for _ in range(min(k, n - (len(tokens) - len(prompt)) - 1)):
            proposals.append(argmax(draft, tokens + proposals))
        j = 0
        while j < len(proposals) and proposals[j] == argmax(target, tokens + proposals[:j]):
            j += 1
        proposed, accepted = proposed + len(proposals), accepted + j
        tokens += [*proposals[:j], argmax(target, tokens + proposals[:j])]
    return proposed, accepted


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (and the CI machine has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("prompt", [[7], [3, 9, 27, 1, 60]])
def test_greedy_equals_target_greedy(k, prompt):
    target = tiny(0)
    reference = list(reference_generate_ids(target, prompt, 20, temperature=0.0))
    drafts = {
        "unrelated smaller": tiny(1, d_model=16, layers=1),
        "noisy copy": perturbed(target, 0.05, seed=k),
        "same": target,
    }
    for name, draft in drafts.items():
        result = speculative_generate(target, draft, prompt, 20, k=k, temperature=0.0)
        assert result.token_ids == reference, name
        assert result.proposed >= (20 - 1) // (k + 1) * k, name
        assert result.acceptance_rate == pytest.approx(result.accepted / result.proposed)
    same = speculative_generate(target, target, prompt, 20, k=k, temperature=0.0)
    assert same.accepted == same.proposed and same.acceptance_rate == 1.0
    # The noisy draft must exercise both roll-back paths: some accepted, some rejected; its
    # counts match an uncached replay, so its own cache was rolled back right too.
    noisy = speculative_generate(target, drafts["noisy copy"], prompt, 20, k=k, temperature=0.0)
    assert 0 < noisy.accepted < noisy.proposed
    replay = greedy_counts(target, drafts["noisy copy"], prompt, 20, k)
    assert (noisy.proposed, noisy.accepted) == replay


def test_greedy_stops_before_eos_and_counts_rounds():
    target, draft = tiny(0), tiny(1, d_model=16, layers=1)
    reference = list(reference_generate_ids(target, [5, 6], 12, temperature=0.0))
    eos = reference[7]
    cut = reference[: reference.index(eos)]
    result = speculative_generate(target, draft, [5, 6], 12, k=3, temperature=0.0, eos_id=eos)
    assert result.token_ids == cut
    # Far from max_new_tokens every round proposes k = 3 draft tokens.
    assert result.proposed % 3 == 0 and 0 <= result.accepted <= result.proposed
    assert speculative_generate(target, draft, [5], 0, k=2).token_ids == []


def test_sampling_with_draft_equal_to_target_accepts_everything():
    target = tiny(0)
    result = speculative_generate(target, target, [1, 2, 3], 25, k=4, temperature=1.0, seed=3)
    assert len(result.token_ids) == 25
    assert result.proposed == 20 and result.accepted == 20 and result.acceptance_rate == 1.0
    again = speculative_generate(target, target, [1, 2, 3], 25, k=4, temperature=1.0, seed=3)
    assert again.token_ids == result.token_ids


def test_verify_draft_matches_hand_computed_distribution():
    """k = 1, p = [.5, .3, .2], q = [.2, .2, .6]: every output token ~ p; acceptance = Σ min."""
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    bonus = torch.tensor([0.0, 0.0, 1.0])  # after an accepted x_1 the bonus is always token 2
    g = torch.Generator().manual_seed(0)
    n, first, accepted = 6000, torch.zeros(3), 0
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        target_logits = torch.stack([p, bonus.clamp(min=1e-30)]).log()
        j, token = verify_draft(target_logits, q.log()[None], torch.tensor([x]), 1.0, g)
        first[x if j == 1 else token] += 1
        accepted += j
        if j == 1:
            assert token == 2
    assert chi2(first, p) < CHI2_CRIT_DF2
    assert chi2(first, q) > CHI2_CRIT_DF2  # the draft's distribution is told apart
    # Σ min(p, q) = .2 + .2 + .2 = .6; standard error sqrt(.24 / 6000) ≈ .0063
    assert abs(accepted / n - 0.6) < 0.03


def test_verify_draft_greedy_and_shape_errors():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    draft_logits = torch.zeros(2, 3)
    assert verify_draft(logits, draft_logits, torch.tensor([1, 0]), 0.0) == (2, 2)
    assert verify_draft(logits, draft_logits, torch.tensor([1, 2]), 0.0) == (1, 0)
    assert verify_draft(logits, draft_logits, torch.tensor([2, 0]), 0.0) == (0, 1)
    with pytest.raises(ValueError, match="k \\+ 1 target rows"):
        verify_draft(logits[:2], draft_logits, torch.tensor([1, 0]), 0.0)


def exact_marginals(model: TransformerLM, prompt: list[int], steps: int, t: float) -> list:
    """Exact distribution of each of the first `steps` sampled tokens, by enumerating prefixes."""
    vocab = model.config.vocab_size
    marginals, prefix_probs = [], {(): 1.0}
    with torch.no_grad():
        for _ in range(steps):
            prefixes = list(prefix_probs)
            ids = torch.tensor([prompt + list(pre) for pre in prefixes])
            probs = torch.softmax(model(ids)[:, -1].double() / t, dim=-1)  # (prefixes, vocab)
            weights = torch.tensor([prefix_probs[pre] for pre in prefixes], dtype=torch.float64)
            marginals.append((weights[:, None] * probs).sum(0))
            prefix_probs = {
                (*pre, x): float(weights[i] * probs[i, x])
                for (i, pre), x in itertools.product(enumerate(prefixes), range(vocab))
            }
    return marginals


@pytest.mark.parametrize(("k", "steps", "temperature"), [(1, 2, 1.0), (2, 3, 0.8)])
def test_sampled_tokens_follow_the_target_distribution(k, steps, temperature):
    target, draft = tiny(0, vocab=8), tiny(1, vocab=8, d_model=16, layers=1)
    prompt, n = [3, 5, 7], 1500
    counts = torch.zeros(steps, 8, dtype=torch.float64)
    accepted = 0
    for seed in range(n):
        result = speculative_generate(
            target, draft, prompt, steps, k=k, temperature=temperature, seed=seed
        )
        assert len(result.token_ids) == steps
        counts[torch.arange(steps), torch.tensor(result.token_ids)] += 1
        accepted += result.accepted
    want = exact_marginals(target, prompt, steps, temperature)
    draft_want = exact_marginals(draft, prompt, steps, temperature)
    for step in range(steps):
        assert chi2(counts[step], want[step]) < CHI2_CRIT_DF7, step
    # The first token's draft distribution differs clearly: following q would fail the test.
    assert chi2(counts[0], draft_want[0]) > 5 * CHI2_CRIT_DF7
    if k == 1:  # one proposal per call: the acceptance rate is Σ_x min(p(x), q(x))
        rate = float(torch.minimum(want[0], draft_want[0]).sum())
        assert abs(accepted / n - rate) < 4 * (rate * (1 - rate) / n) ** 0.5


def test_bad_arguments_raise_value_errors():
    target, draft = tiny(0), tiny(1, d_model=16, layers=1)
    with pytest.raises(ValueError, match="k \\(draft tokens per round\\)"):
        speculative_generate(target, draft, [1], 5, k=0)
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(target, tiny(2, vocab=32), [1], 5)
    with pytest.raises(ValueError, match=r"prompts\[0\] has 32 tokens but the model's context"):
        speculative_generate(target, draft, [1] * 32, 5)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, [1], 5, temperature=-1.0)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(target, draft, [], 5)


def test_output_stops_at_the_end_of_the_smaller_context():
    """The prompt rule: max_new_tokens past the context is cut there (both models' contexts)."""
    target = tiny(0)  # context 32
    torch.manual_seed(1)
    draft = TransformerLM(64, 24, 16, 1, 2)
    prompt = [3, 1, 4, 1, 5]
    got = speculative_generate(target, draft, prompt, 50, k=3, temperature=0.0)
    assert got.token_ids == list(reference_generate_ids(target, prompt, 19, temperature=0.0))
    with pytest.raises(ValueError, match=r"prompts\[0\] has 24 tokens but the model's context"):
        speculative_generate(target, draft, [1] * 24, 5)
    assert len(speculative_generate(target, tiny(2), [1] * 30, 5, temperature=1.0,
                                    seed=0).token_ids) == 2


def test_compiled_greedy_speculative_equals_the_target_alone(monkeypatch):
    from lmforge.infer import fast_decode

    monkeypatch.setattr(fast_decode, "COMPILE_BACKEND", "aot_eager")
    torch.manual_seed(0)
    target = TransformerLM(64, 48, 32, 2, 4, attention="sdpa").eval()
    draft = TransformerLM(64, 48, 16, 1, 2, attention="sdpa").eval()
    prompt = [3, 1, 4, 1, 5]
    want = generate_batch(target, [prompt], 20)[0]
    got = speculative_generate(target, draft, prompt, 20, k=3, temperature=0.0, compile=True)
    assert got.token_ids == want
