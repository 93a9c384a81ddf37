"""Supervised fine-tuning as tensor functions: tokenised pairs, response log-probs, the loss.

The CS336 assignment 5 interface (its names and semantics), on any causal LM whose forward
returns logits or an object with `.logits` (our `TransformerLM`, a transformers
`LlamaForCausalLM`):

    batch = tokenize_prompt_and_output(prompts, outputs, tokenizer)  # input_ids, labels, mask
    out = get_response_log_probs(model, batch["input_ids"], batch["labels"])
    loss, meta = sft_microbatch_train_step(out["log_probs"], batch["response_mask"], n_accum)

SFT maximises the log-likelihood of the response given the prompt (the prompt and padding are
masked out of the loss):

    loss = -(1/B) Σ_b Σ_t mask[b,t] · log p(labels[b,t] | input_ids[b, :t+1]) / c / n_accum

with c = `normalize_constant` (CS336's definition: `masked_normalize` over the sequence, mean
over the batch). Dividing instead by the number of response tokens (c = Σ mask, B = 1:
`-masked_mean`) makes the loss independent of how documents are laid out in rows; that is the
normalisation `sft_batch_loss` uses for the batches of `lmforge.align.data` (packed or padded).

Log-probs are computed as `logits[label] - logsumexp(logits)` in float32 (no (batch, seq, vocab)
log-softmax kept beyond the logits themselves), and the entropy as -Σ p log p from the
max-shifted `log_softmax`, which neither overflows nor takes log 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lmforge import ENDOFTEXT
from lmforge.errors import InvalidArgument
from lmforge.tokenizer import Tokenizer


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id padding uses: `<|endoftext|>`'s (InvalidArgument when the tokenizer lacks it)."""
    pad = tokenizer.id_of(ENDOFTEXT.encode()) if ENDOFTEXT in tokenizer.special_tokens else None
    if pad is None:
        raise InvalidArgument(
            f"the tokenizer has no {ENDOFTEXT} special token, which SFT pads with and ends "
            "responses with; use a tokenizer trained with it (lmforge tokenizer train adds it)"
        )
    return pad


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of user text; special-token strings in it are refused (TokenizerInputError),
    so data never writes a control token such as `<|endoftext|>` (as at every entry point)."""
    return tokenizer.encode(text, special="raise")


def tokenize_prompt_and_output(
    prompt_strs: Sequence[str], output_strs: Sequence[str], tokenizer: Tokenizer
) -> dict[str, Tensor]:
    """Prompt and output tokenised separately, concatenated, right-padded and shifted by one.

    Each sequence is prompt_ids + output_ids, padded with `<|endoftext|>` to the longest one
    (max_len tokens). Returns int64 "input_ids" (all but the last token) and "labels" (all but
    the first), and bool "response_mask", True where the label is an output token: each of
    shape (batch, max_len - 1).

    >>> tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], [ENDOFTEXT])   # bytes = ids
    >>> out = tokenize_prompt_and_output(["ab", "a"], ["c", "bcd"], tok)
    >>> out["input_ids"].tolist(), out["labels"].tolist()
    ([[97, 98, 99], [97, 98, 99]], [[98, 99, 256], [98, 99, 100]])
    >>> out["response_mask"].int().tolist()
    [[0, 1, 0], [1, 1, 1]]
    """
    if len(prompt_strs) != len(output_strs):
        raise InvalidArgument(
            f"{len(prompt_strs)} prompts but {len(output_strs)} outputs; give one output per prompt"
        )
    if not prompt_strs:
        raise InvalidArgument("no prompts given; give at least one prompt and output")
    pad = pad_token_id(tokenizer)
    prompts = [encode_text(tokenizer, p) for p in prompt_strs]
    outputs = [encode_text(tokenizer, o) for o in output_strs]
    max_len = max(len(p) + len(o) for p, o in zip(prompts, outputs, strict=True))
    if max_len < 2:
        raise InvalidArgument("every prompt + output is under 2 tokens; nothing to predict")
    ids = torch.full((len(prompts), max_len), pad, dtype=torch.long)
    is_output = torch.zeros((len(prompts), max_len), dtype=torch.bool)
    for b, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        ids[b, : len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        is_output[b, len(p) : len(p) + len(o)] = True
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "response_mask": is_output[:, 1:]}


def compute_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) over the last dim: (..., vocab) → (...), in float32.

    H = -Σ p log p with log p = z - logsumexp(z) taken from the max-shifted logits
    (`log_softmax`), so large logits neither overflow nor cancel (logsumexp(z) - Σ p·z would
    lose ln 2 to rounding at z = (5000, 5000)); p log p = 0 where p = 0 (-inf logits allowed).

    >>> compute_entropy(torch.tensor([[0.0, 0.0], [1000.0, -1000.0]])).tolist()  # ln 2, 0
    [0.6931471824645996, 0.0]
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    return torch.where(p > 0, -p * log_p, 0).sum(dim=-1)


def model_logits(model: nn.Module, input_ids: Tensor, **kwargs) -> Tensor:
    """`model(input_ids, **kwargs)` as a logits tensor, whether it returns one or has `.logits`."""
    out = model(input_ids, **kwargs)
    return out if isinstance(out, Tensor) else out.logits


def get_response_log_probs(
    model: nn.Module,
    input_ids: Tensor,
    labels: Tensor,
    return_token_entropy: bool = False,
    *,
    document_ids: Tensor | None = None,
) -> dict[str, Tensor]:
    """log p(labels[b, t] | input_ids[b, :t+1]) for every position: {"log_probs": (batch, seq)}.

    Nothing is masked (prompt and padding positions included; the loss masks them). With
    `return_token_entropy`, also "token_entropy" (batch, seq): the entropy of each next-token
    distribution. Both float32. `document_ids` (packed rows, `lmforge.align.data`) is passed to
    the model's forward (our `TransformerLM`: block-diagonal attention, per-document positions).
    """
    kwargs = {} if document_ids is None else {"document_ids": document_ids}
    logits = model_logits(model, input_ids, **kwargs).float()  # (batch, seq, vocab)
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    result = {"log_probs": picked - torch.logsumexp(logits, dim=-1)}
    if return_token_entropy:
        result["token_entropy"] = compute_entropy(logits)
    return result


def masked_mean(tensor: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `tensor` over the elements where `mask` is true, along `dim` (None: all).

    A row with no true element has no mean: 0/0 = NaN, as the definition says (callers that
    cannot have one should check, not hide it). Masked-out values never leak in, even inf/NaN.

    >>> masked_mean(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1, 1], [0, 0]]), dim=1)
    tensor([2., nan])
    """
    keep = mask.bool()
    kept = torch.where(keep, tensor, 0)
    if dim is None:
        return kept.sum() / keep.sum()
    return kept.sum(dim) / keep.sum(dim)


def masked_normalize(
    tensor: Tensor, mask: Tensor, dim: int | None = None, normalize_constant: float = 1.0
) -> Tensor:
    """Σ of `tensor` where `mask` is true, along `dim` (None: all), divided by the constant.

    >>> masked_normalize(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1, 0], [1, 1]]),
    ...                  dim=-1, normalize_constant=2.0)
    tensor([0.5000, 6.0000])
    """
    kept = torch.where(mask.bool(), tensor, 0)
    return (kept.sum() if dim is None else kept.sum(dim)) / normalize_constant


def sft_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch of SFT: the loss (module docstring), its backward, and metadata.

    policy_log_probs, response_mask: (batch, seq). The loss is (CS336: summed over the
    sequence, averaged over the batch; `loss.backward()` is called here)

        -masked_normalize(log_probs, mask, dim=-1, normalize_constant).mean() / accumulation steps

    Metadata (detached): "nll" (the loss before dividing by the accumulation steps),
    "response_tokens" (Σ mask) and "mean_response_log_prob" (per response token).
    """
    if gradient_accumulation_steps < 1:
        raise InvalidArgument(
            f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    per_sequence = masked_normalize(policy_log_probs, response_mask, -1, normalize_constant)
    nll = -per_sequence.mean()
    loss = nll / gradient_accumulation_steps
    loss.backward()
    return loss, {
        "nll": nll.detach(),
        "response_tokens": response_mask.sum().detach(),
        "mean_response_log_prob": masked_mean(policy_log_probs.detach(), response_mask),
    }


def sft_batch_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict]:
    """Mean negative log-likelihood per response token of a `lmforge.align.data` batch.

    `batch` holds "input_ids", "labels", "response_mask" (batch, seq) and, for packed rows,
    "document_ids" (passed to the model). The loss is -masked_mean(log_probs, response_mask):
    the same value for the same documents packed or padded (tests/align/test_packing.py).
    No backward (the trainer's step does it). Returns (loss, {"response_tokens": int}).
    """
    out = get_response_log_probs(model, batch["input_ids"], batch["labels"],
                                 document_ids=batch.get("document_ids"))
    mask = batch["response_mask"]
    return -masked_mean(out["log_probs"], mask), {"response_tokens": int(mask.sum())}
