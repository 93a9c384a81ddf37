"""Repetition / frequency / presence penalties against HF's logits processor and hand values."""

import pytest
import torch

from lmforge.infer.sampling import apply_penalties, token_logprobs


def test_repetition_penalty_equals_huggingface_processor():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    previous = torch.randint(0, 50, (3, 12))
    hf = transformers.RepetitionPenaltyLogitsProcessor(1.3)(previous, logits.clone())
    torch.testing.assert_close(apply_penalties(logits, previous, repetition_penalty=1.3), hf)


def test_frequency_and_presence_hand_computed_and_padding_ignored():
    logits = torch.zeros(1, 4)
    previous = torch.tensor([[2, 2, 2, 1, 9]])  # 9 is padding
    logits9 = torch.zeros(1, 10)
    out = apply_penalties(logits9, previous, frequency_penalty=0.25, presence_penalty=1.0,
                          pad_id=9)
    assert out[0, :4].tolist() == [0.0, -1.25, -1.75, 0.0]
    assert out[0, 9].item() == 0.0
    assert torch.equal(apply_penalties(logits, torch.zeros(1, 0, dtype=torch.long)), logits)


def test_no_penalty_is_identity_and_bad_values_fail():
    z = torch.randn(2, 7)
    assert torch.equal(apply_penalties(z, torch.randint(0, 7, (2, 3))), z)
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_penalties(z, torch.randint(0, 7, (2, 3)), repetition_penalty=0)


def test_token_logprobs_equal_torch_log_softmax():
    torch.manual_seed(1)
    z = torch.randn(4, 30) * 10
    t = torch.randint(0, 30, (4,))
    expected = torch.log_softmax(z, -1)[torch.arange(4), t]
    torch.testing.assert_close(token_logprobs(z, t), expected)
