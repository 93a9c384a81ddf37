"""Tests for lmforge.eval.perplexity.evaluate_loss.

References: ln V for a uniform model, explicit per-target loops (numpy / math.log) for stand-in
models whose distribution is known from the last token or from the position in the window, and
torch.nn.functional.cross_entropy over hand-cut windows for the real TransformerLM.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lmforge.eval import EvalResult, evaluate_loss
from lmforge.model import ModelConfig, TransformerLM


class UniformLM(nn.Module):
    """Equal logits for every token: the loss of any target is ln V. Records input shapes."""

    def __init__(self, vocab_size: int, context_length: int):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, context_length=context_length)
        self.shapes: list[tuple[int, int]] = []
        self.modes: list[tuple[bool, bool]] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(ids.shape))
        self.modes.append((self.training, torch.is_inference_mode_enabled()))
        return torch.zeros(*ids.shape, self.config.vocab_size)


class BigramTableLM(nn.Module):
    """log P(next | last) = log_probs[last]: the loss does not depend on the windowing."""

    def __init__(self, log_probs: torch.Tensor, context_length: int):
        super().__init__()
        self.log_probs = log_probs
        self.config = SimpleNamespace(vocab_size=log_probs.shape[0], context_length=context_length)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.log_probs[ids]


class PositionLM(nn.Module):
    """At window position t the logits are ``t * bias``: the loss depends on where windows cut."""

    def __init__(self, bias: torch.Tensor, context_length: int):
        super().__init__()
        self.bias = bias
        self.config = SimpleNamespace(vocab_size=len(bias), context_length=context_length)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = torch.arange(ids.shape[1], dtype=torch.float32)
        return (t[:, None] * self.bias).expand(ids.shape[0], -1, -1)


def position_reference(tokens: np.ndarray, bias: np.ndarray, c: int) -> float:
    """Per-target loop: target j (1..n-1) sits at window position (j - 1) % c."""
    total = 0.0
    for j in range(1, len(tokens)):
        logits = ((j - 1) % c) * bias
        log_z = math.log(sum(math.exp(v) for v in logits))
        total += log_z - logits[tokens[j]]
    return total / (len(tokens) - 1)


def test_uniform_model_loss_is_ln_v_and_perplexity_is_v():
    tokens = np.random.default_rng(0).integers(0, 37, size=1000)
    result = evaluate_loss(UniformLM(37, 16), tokens, batch_size=4)
    assert isinstance(result, EvalResult)
    assert result.loss == pytest.approx(math.log(37), rel=1e-6)
    assert result.perplexity == pytest.approx(37, rel=1e-5)
    assert result.tokens == 999 and result.bits_per_byte is None


def test_every_target_is_scored_once_in_non_overlapping_windows():
    model = UniformLM(5, 4)
    evaluate_loss(model, np.zeros(11, dtype=np.int64), batch_size=8)  # 10 targets: 4 + 4 + 2
    assert model.shapes == [(2, 4), (1, 2)]
    model = UniformLM(5, 4)
    evaluate_loss(model, np.zeros(30, dtype=np.int64), batch_size=3)  # 29 = 7 * 4 + 1
    assert model.shapes == [(3, 4), (3, 4), (1, 4), (1, 1)]
    assert sum(r * w for r, w in model.shapes) == 29


@pytest.mark.parametrize(("n", "c", "batch_size"), [(11, 4, 8), (50, 7, 2), (9, 8, 1), (2, 3, 1)])
def test_loss_is_the_token_weighted_mean_over_windows_including_the_partial_one(n, c, batch_size):
    bias = torch.tensor([0.3, -0.2, 0.5, 0.0, -0.4])
    tokens = np.random.default_rng(n).integers(0, 5, size=n)
    result = evaluate_loss(PositionLM(bias, c), tokens, batch_size=batch_size)
    expected = position_reference(tokens, bias.numpy().astype(float), c)
    assert result.tokens == n - 1
    assert result.loss == pytest.approx(expected, rel=1e-5)
    # the mean of per-window means weighs the short last window wrongly: a distinct value
    if (n - 1) % c and n - 1 > c:
        assert abs(result.loss - _mean_of_window_means(tokens, bias, c)) > 1e-4


def _mean_of_window_means(tokens: np.ndarray, bias: torch.Tensor, c: int) -> float:
    means = []
    for start in range(0, len(tokens) - 1, c):
        window = tokens[start : start + c + 1]
        means.append(position_reference(window, bias.numpy().astype(float), c))
    return float(np.mean(means))


def test_fixed_bigram_model_matches_a_per_token_loop():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(9, 9), dim=-1)
    tokens = np.random.default_rng(1).integers(0, 9, size=301).astype(np.uint16)
    result = evaluate_loss(BigramTableLM(log_probs, 16), tokens, batch_size=3)
    lp = log_probs.double().numpy()
    expected = -np.mean([lp[a, b] for a, b in itertools.pairwise(tokens)])
    assert result.loss == pytest.approx(expected, rel=1e-6)


def test_max_tokens_scores_only_the_first_targets():
    torch.manual_seed(1)
    log_probs = torch.log_softmax(torch.randn(6, 6), dim=-1)
    tokens = np.random.default_rng(2).integers(0, 6, size=500)
    model = BigramTableLM(log_probs, 8)
    part = evaluate_loss(model, tokens, max_tokens=37)
    assert part.tokens == 37
    assert part.loss == pytest.approx(evaluate_loss(model, tokens[:38]).loss, rel=1e-6)
    assert abs(part.loss - evaluate_loss(model, tokens).loss) > 1e-3
    assert evaluate_loss(model, tokens, max_tokens=10**6).tokens == 499


def test_context_length_override_and_bits_per_byte():
    bias = torch.tensor([1.0, 0.0, -1.0])
    tokens = np.random.default_rng(3).integers(0, 3, size=40)
    result = evaluate_loss(PositionLM(bias, 8), tokens, context_length=5, bytes_per_token=3.5)
    assert result.loss == pytest.approx(position_reference(tokens, bias.numpy(), 5), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2) / 3.5)


def test_reads_a_memory_mapped_uint16_token_file(tmp_path):
    tokens = np.random.default_rng(4).integers(0, 9, size=257).astype(np.uint16)
    np.save(tmp_path / "val.npy", tokens)
    mm = np.load(tmp_path / "val.npy", mmap_mode="r")
    log_probs = torch.log_softmax(torch.randn(9, 9), dim=-1)
    model = BigramTableLM(log_probs, 10)
    assert evaluate_loss(model, mm).loss == pytest.approx(evaluate_loss(model, tokens).loss)


def test_runs_in_eval_and_inference_mode_and_restores_training_mode():
    model = UniformLM(4, 4)
    model.train()
    evaluate_loss(model, np.zeros(10, dtype=np.int64))
    assert model.modes and all(m == (False, True) for m in model.modes)
    assert model.training


@pytest.mark.parametrize(
    ("tokens", "kw", "match"),
    [
        (np.zeros(1, dtype=np.int64), {}, "at least 2 tokens"),
        (np.zeros((2, 5), dtype=np.int64), {}, "1-D"),
        (np.zeros(5, dtype=np.float32), {}, "integer"),
        (np.array([0, 1, 4]), {}, r"outside \[0, 4\)"),
        (np.zeros(5, dtype=np.int64), {"context_length": 9}, "context_length"),
        (np.zeros(5, dtype=np.int64), {"batch_size": 0}, "batch_size"),
        (np.zeros(5, dtype=np.int64), {"max_tokens": 0}, "max_tokens"),
        (np.zeros(5, dtype=np.int64), {"bytes_per_token": 0.0}, "bytes_per_token"),
    ],
)
def test_bad_input_is_a_clear_error(tokens, kw, match):
    with pytest.raises(ValueError, match=match):
        evaluate_loss(UniformLM(4, 8), tokens, **kw)


def test_real_transformer_matches_torch_cross_entropy_over_hand_cut_windows():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, context_length=8, d_model=32, num_layers=2, num_heads=4)
    model = TransformerLM.from_config(config)
    tokens = np.random.default_rng(5).integers(0, 50, size=30)  # 29 targets: 3 x 8 + 5
    result = evaluate_loss(model, tokens, batch_size=2)
    t = torch.from_numpy(tokens)
    total = 0.0
    with torch.no_grad():
        for s in range(0, 29, 8):
            x, y = t[s : min(s + 8, 29)], t[s + 1 : min(s + 9, 30)]
            loss = nn.functional.cross_entropy(model(x[None])[0], y, reduction="sum")
            total += loss.item()
    assert result.tokens == 29
    assert result.loss == pytest.approx(total / 29, rel=1e-5)
