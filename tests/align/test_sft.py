"""SFT tensor functions (lmforge.align.sft) against hand-computed values and independent references:
torch.distributions.Categorical, log_softmax + gather, F.cross_entropy, and a transformers
LlamaForCausalLM holding our model's weights (its own loss with -100 labels is the SFT loss
TRL's SFTTrainer trains with when it masks the prompt)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge import ENDOFTEXT
from lmforge.align.sft import (
    compute_entropy,
    get_response_log_probs,
    masked_mean,
    masked_normalize,
    sft_batch_loss,
    sft_microbatch_train_step,
    tokenize_prompt_and_output,
)
from lmforge.errors import InvalidArgument, LmforgeError
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer


def byte_tokenizer(merges=()) -> Tokenizer:
    vocab = {i: bytes([i]) for i in range(256)}
    for n, (a, b) in enumerate(merges):
        vocab[257 + n] = a + b
    return Tokenizer(vocab, list(merges), [ENDOFTEXT])


def tiny_model(**switches) -> TransformerLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, context_length=64, d_model=32, num_layers=2,
                         num_heads=4, **switches)
    return TransformerLM.from_config(config).eval()


# ----------------------------------------------------------------- tokenize_prompt_and_output


def test_tokenize_prompt_and_output_hand_example():
    out = tokenize_prompt_and_output(["Hi", "Q:"], ["!", "yes"], byte_tokenizer())
    # "Hi!" = [72, 105, 33] padded with <|endoftext|> (256) to "Q:yes" = [81, 58, 121, 101, 115]
    assert out["input_ids"].tolist() == [[72, 105, 33, 256], [81, 58, 121, 101]]
    assert out["labels"].tolist() == [[105, 33, 256, 256], [58, 121, 101, 115]]
    assert out["response_mask"].tolist() == [[False, True, False, False],
                                             [False, True, True, True]]
    assert all(v.shape == (2, 4) for v in out.values())
    assert out["input_ids"].dtype == torch.long and out["response_mask"].dtype == torch.bool


def test_prompt_and_output_are_tokenized_separately():
    # With the merge "a"+"b" -> 257, "ab" as one text is [257]; split as prompt "a" and output
    # "b" each half is tokenised alone: [97] + [98].
    tok = byte_tokenizer([(b"a", b"b")])
    assert tok.encode("ab") == [257]
    out = tokenize_prompt_and_output(["a", "ab"], ["b", "abab"], tok)
    assert out["input_ids"].tolist() == [[97, 98], [257, 257]]
    eot = tok.id_of(ENDOFTEXT.encode())  # 258: appended after the merged token
    assert out["labels"].tolist() == [[98, eot], [257, 257]]
    assert out["response_mask"].tolist() == [[True, False], [True, True]]


def test_tokenize_refuses_special_tokens_and_mismatched_lists():
    with pytest.raises(LmforgeError, match="endoftext"):
        tokenize_prompt_and_output(["a"], [f"b{ENDOFTEXT}"], byte_tokenizer())
    with pytest.raises(InvalidArgument, match="2 prompts but 1 outputs"):
        tokenize_prompt_and_output(["a", "b"], ["c"], byte_tokenizer())
    no_eot = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    with pytest.raises(InvalidArgument, match="endoftext"):
        tokenize_prompt_and_output(["a"], ["b"], no_eot)


# ----------------------------------------------------------------------------- entropy


def test_entropy_equals_categorical_and_is_stable():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 17) * 4
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(compute_entropy(logits), expected)
    # Uniform over V: ln V; one-hot in the limit: 0; huge logits neither overflow nor NaN.
    assert compute_entropy(torch.zeros(7)).item() == pytest.approx(math.log(7))
    huge = torch.tensor([1e4, -1e4, 0.0])
    assert compute_entropy(huge).item() == pytest.approx(0.0, abs=1e-6)
    big = torch.tensor([5e3, 5e3])
    assert compute_entropy(big).item() == pytest.approx(math.log(2))
    assert compute_entropy(torch.tensor([0.0, 0.0, float("-inf")])).item() == pytest.approx(
        math.log(2))
    assert compute_entropy(torch.randn(2, 4).bfloat16()).dtype == torch.float32


# --------------------------------------------------------------------- masked mean / normalize


def test_masked_mean_hand_values_and_all_false_row_is_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    m = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    rows = masked_mean(x, m, dim=1)
    assert rows[0].item() == 2.0 and rows[2].item() == 8.0
    assert math.isnan(rows[1].item())  # 0 / 0: a mean over nothing
    assert masked_mean(x, m, dim=0).tolist() == [4.0, 8.0, 6.0]
    assert masked_mean(x, m).item() == pytest.approx((1 + 3 + 7 + 8 + 9) / 5)
    # Masked-out values never leak in, not even inf or NaN (log-probs of padding can be -inf).
    bad = x.clone()
    bad[1, 1], bad[0, 1] = float("-inf"), float("nan")
    assert masked_mean(bad, m).item() == pytest.approx(28 / 5)
    assert math.isnan(masked_mean(x, torch.zeros_like(m)).item())


def test_masked_normalize_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_normalize(x, m, dim=-1, normalize_constant=2.0).tolist() == [1.5, 3.0]
    assert masked_normalize(x, m, dim=0).tolist() == [1.0, 2.0, 6.0]
    assert masked_normalize(x, m, normalize_constant=4.0).item() == 9.0 / 4
    assert masked_normalize(x, torch.zeros_like(m), dim=-1).tolist() == [0.0, 0.0]


# ----------------------------------------------------------------- sft_microbatch_train_step


def test_sft_microbatch_train_step_loss_and_gradient_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, meta = sft_microbatch_train_step(log_probs, mask, gradient_accumulation_steps=4,
                                           normalize_constant=2.0)
    # rows: (2 + 3) / 2 = 2.5 and (0.5 + 0.25) / 2 = 0.375; mean 1.4375; / 4 steps
    assert loss.item() == pytest.approx(1.4375 / 4)
    assert meta["nll"].item() == pytest.approx(1.4375)
    assert meta["response_tokens"].item() == 4
    assert meta["mean_response_log_prob"].item() == pytest.approx(-5.75 / 4)
    # d loss / d log_prob = -mask / (normalize_constant · batch · accumulation steps)
    torch.testing.assert_close(log_probs.grad, -mask.float() / (2.0 * 2 * 4))
    with pytest.raises(InvalidArgument):
        sft_microbatch_train_step(log_probs.detach(), mask, 0)


# ----------------------------------------------------------------- get_response_log_probs


class LogitsObject(torch.nn.Module):
    """A model whose forward returns an object with `.logits`, like transformers' models."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return type("Output", (), {"logits": self.inner(ids)})()


def test_response_log_probs_equal_gather_of_log_softmax():
    model = tiny_model()
    batch = tokenize_prompt_and_output(["Hello", "Q"], [" world", ": 42"], byte_tokenizer())
    with torch.no_grad():
        out = get_response_log_probs(model, batch["input_ids"], batch["labels"],
                                     return_token_entropy=True)
        logits = model(batch["input_ids"])
        wrapped = get_response_log_probs(LogitsObject(model), batch["input_ids"],
                                         batch["labels"])
    expected = logits.log_softmax(-1).gather(-1, batch["labels"][..., None]).squeeze(-1)
    torch.testing.assert_close(out["log_probs"], expected)
    torch.testing.assert_close(out["token_entropy"],
                               torch.distributions.Categorical(logits=logits).entropy())
    assert torch.equal(wrapped["log_probs"], out["log_probs"])
    assert "token_entropy" not in wrapped


def test_sft_batch_loss_equals_masked_cross_entropy():
    model = tiny_model()
    batch = tokenize_prompt_and_output(["ab", "xyz"], ["cd", "w"], byte_tokenizer())
    loss, meta = sft_batch_loss(model, batch)
    targets = batch["labels"].masked_fill(~batch["response_mask"], -100)
    expected = F.cross_entropy(model(batch["input_ids"]).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected)
    assert meta == {"response_tokens": 3}


def _llama_twin(model: TransformerLM):
    transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")
    from lmforge.model.hf import llama_config_kwargs, to_llama_state_dict

    hf_config = transformers.LlamaConfig(**llama_config_kwargs(model.config))
    hf_config._attn_implementation = "eager"
    llama = transformers.LlamaForCausalLM(hf_config).eval()
    llama.load_state_dict(to_llama_state_dict(model.state_dict(), model.config), strict=False)
    return llama


def test_hf_llama_with_our_weights_gives_the_same_log_probs_entropy_and_loss():
    model = tiny_model()
    llama = _llama_twin(model)
    batch = tokenize_prompt_and_output(["The cat", "1+1="], [" sat.", "2"], byte_tokenizer())
    with torch.no_grad():
        ours = get_response_log_probs(model, batch["input_ids"], batch["labels"], True)
        theirs = get_response_log_probs(llama, batch["input_ids"], batch["labels"], True)
        ours_loss, _ = sft_batch_loss(model, batch)
        # transformers' own loss: labels -100 outside the response (it shifts them itself, so
        # give it the unshifted sequence: input_ids plus the last label).
        full = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1)
        hf_labels = torch.cat([torch.full((2, 1), -100),
                               batch["labels"].masked_fill(~batch["response_mask"], -100)], 1)
        hf_loss = llama(full, labels=hf_labels).loss
    torch.testing.assert_close(theirs["log_probs"], ours["log_probs"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(theirs["token_entropy"], ours["token_entropy"],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_loss, hf_loss, atol=1e-4, rtol=1e-4)


def test_sft_step_gradients_match_hf_llama():
    model = tiny_model()
    llama = _llama_twin(model)
    batch = tokenize_prompt_and_output(["ab"], ["cde"], byte_tokenizer())
    for net in (model, llama):
        lp = get_response_log_probs(net, batch["input_ids"], batch["labels"])["log_probs"]
        sft_microbatch_train_step(lp, batch["response_mask"], 2, normalize_constant=3.0)
    torch.testing.assert_close(llama.lm_head.weight.grad, model.lm_head.weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(llama.model.embed_tokens.weight.grad,
                               model.token_embeddings.weight.grad, atol=1e-5, rtol=1e-4)
