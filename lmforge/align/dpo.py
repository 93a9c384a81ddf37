"""Direct preference optimisation (DPO) and its IPO and length-normalised variants.

A preference pair is a prompt x, a preferred response y_c ("chosen") and a dispreferred one y_r
("rejected"). With the policy π being trained and a frozen reference π_ref (the initial policy):

    logratio(y) = log π(y | x) - log π_ref(y | x)     summed over the response tokens, the
                                                      appended <|endoftext|> included (nats)
    h           = logratio(y_c) - logratio(y_r)

    "sigmoid"            DPO (Rafailov et al. 2023, Eq. 7):   L = -log σ(β·h)
    "ipo"                IPO (Azar et al. 2023, Eq. 17):      L = (h - 1/(2β))²
    "length_normalized"  LN-DPO (Ahrabian et al. 2024, length-normalised DPO; TRL's
                         "sigmoid_norm"):  L = -log σ(β·[logratio(y_c)/|y_c| - logratio(y_r)/|y_r|])

|y| is the response length in tokens (its <|endoftext|> included). LN-DPO keeps the reference
model; it is not SimPO (Meng et al. 2024), which drops the reference and adds a target margin γ:
SimPO's loss is this one with the reference log-probs set to 0 and γ = 0. IPO regresses h onto
1/(2β) instead of pushing it to infinity. Given the lengths, "ipo" uses the per-token averages
logratio(y)/|y| in h, as TRL's "ipo" does (the normalisation the IPO authors used for their
results); without lengths it is Eq. 17 on the summed log-probs as given. The loss is the mean
over the pairs of a batch.

The implicit rewards r(y) = β·logratio(y) (DPO's reparameterisation) give the metrics, as TRL
logs them: "rewards_chosen", "rewards_rejected", "margins" = r(y_c) - r(y_r), and "accuracy",
the fraction of pairs with r(y_c) > r(y_r) (the same summed rewards for every loss type).

`compute_per_instance_dpo_loss` is CS336 assignment 5's single-pair loss: the prompt in the
Alpaca template (`lmforge.align.templates`), <|endoftext|> after each response, sequence
log-probs under both models (`lmforge.align.sft.get_response_log_probs`), any causal LM whose
forward returns logits or an object with `.logits`. The trainer's objective, `DPOObjective`, is
in `lmforge.align.dpo_objective` (which imports this module, so this one cannot re-export it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.align.data import SFTDataset, SFTPair, get_packed_sft_dataset
from lmforge.align.sft import encode_text, get_response_log_probs, pad_token_id
from lmforge.align.templates import format_example
from lmforge.errors import InputError, InvalidArgument

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

LOSS_TYPES = ("sigmoid", "ipo", "length_normalized")


def check_beta(beta: float) -> None:
    """InvalidArgument unless β is a finite number > 0."""
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not (
            math.isfinite(beta) and beta > 0):
        raise InvalidArgument(f"DPO's beta must be a finite number > 0 (e.g. 0.1; smaller lets "
                              f"the policy move further from the reference), got {beta!r}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The mean `loss_type` loss over a batch of pairs (module docstring), and its metadata.

    Each log-prob tensor is (batch,): a response's summed log-prob (nats) under the policy or
    the reference. `chosen_lengths` / `rejected_lengths` (batch,): response lengths in tokens,
    needed by "length_normalized" and used by "ipo" when given. Computed in float32.
    Metadata (detached, (batch,) unless noted): "losses", "rewards_chosen", "rewards_rejected",
    "margins", "accuracy" (a scalar fraction).

    >>> loss, meta = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
    ...                       torch.tensor([-2.0]), beta=0.5)   # h = 1 - (-1) = 2: -log σ(1)
    >>> round(loss.item(), 4), meta["margins"].tolist(), meta["accuracy"].item()
    (0.3133, [1.0], 1.0)
    """
    check_beta(beta)
    if loss_type not in LOSS_TYPES:
        raise InvalidArgument(f"unknown DPO loss_type {loss_type!r}; use one of {LOSS_TYPES}")
    logps = [t.float() for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps)]
    if len({t.shape for t in logps}) != 1 or logps[0].ndim != 1:
        raise InvalidArgument("the four log-prob tensors must each be (batch,), one value per "
                              f"pair; got shapes {[tuple(t.shape) for t in logps]}")
    chosen_logratios, rejected_logratios = logps[0] - logps[2], logps[1] - logps[3]
    chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
    lengths = _lengths(chosen_lengths, rejected_lengths, loss_type, logps[0].shape)
    if lengths is not None and loss_type in ("ipo", "length_normalized"):
        chosen_scores = chosen_logratios / lengths[0]
        rejected_scores = rejected_logratios / lengths[1]
    h = chosen_scores - rejected_scores
    losses = (h - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * h)
    rewards_chosen = beta * chosen_logratios.detach()
    rewards_rejected = beta * rejected_logratios.detach()
    return losses.mean(), {
        "losses": losses.detach(),
        "rewards_chosen": rewards_chosen,
        "rewards_rejected": rewards_rejected,
        "margins": rewards_chosen - rewards_rejected,
        "accuracy": (rewards_chosen > rewards_rejected).float().mean(),
    }


def _lengths(chosen: Tensor | None, rejected: Tensor | None, loss_type: str,
             shape: torch.Size) -> tuple[Tensor, Tensor] | None:
    """The response lengths as float tensors, checked; None when not given."""
    if chosen is None and rejected is None:
        if loss_type == "length_normalized":
            raise InvalidArgument("loss_type 'length_normalized' needs chosen_lengths and "
                                  "rejected_lengths (response tokens per pair)")
        return None
    if chosen is None or rejected is None:
        raise InvalidArgument("give both chosen_lengths and rejected_lengths, or neither")
    out = (torch.as_tensor(chosen).float(), torch.as_tensor(rejected).float())
    if any(t.shape != shape for t in out):
        raise InvalidArgument(f"the lengths must be (batch,) like the log-probs {tuple(shape)}, "
                              f"got {tuple(out[0].shape)} and {tuple(out[1].shape)}")
    if any(bool((t < 1).any()) for t in out):
        raise InvalidArgument("response lengths must be >= 1 token (the end-of-text token "
                              "counts)")
    return out


def preference_rows(
    pairs: Sequence[tuple[str, str, str] | tuple[str, str, str, str]],
    tokenizer: Tokenizer,
    seq_len: int | None = None,
    template: str = "alpaca",
) -> SFTDataset:
    """The 2N sequences of N (prompt, chosen, rejected[, source]) pairs: row i is pair i's
    prompt + chosen + <|endoftext|>, row N + i its prompt + rejected + <|endoftext|>.

    The prompt goes through `template` (`lmforge.align.templates`; "alpaca": CS336's DPO
    format), and rows are laid out one per row by `lmforge.align.data.get_packed_sft_dataset`
    (packing off): labels shifted by one, `response_mask` True on the response labels (the
    end-of-text one included). `seq_len` (None: the longest sequence) bounds a row; a longer
    pair is an InputError naming its source ("file.jsonl:12").
    """
    sft: list[SFTPair] = []
    for responses in (1, 2):  # every chosen response first, then every rejected one
        for i, pair in enumerate(pairs):
            source = pair[3] if len(pair) > 3 else f"pair {i}"
            try:
                prompt, response = format_example(
                    {"prompt": pair[0], "response": pair[responses]}, template,
                    need_response=False)
            except InvalidArgument as e:
                raise InputError(f"{source}: {e}") from None
            sft.append(SFTPair(prompt, response, source))
    if seq_len is None:
        seq_len = max(len(encode_text(tokenizer, p.prompt)) + len(encode_text(tokenizer,
                      p.response)) for p in sft)
    return get_packed_sft_dataset(sft, tokenizer, max(seq_len, 1), packing=False, add_eos=True)


def sequence_log_probs(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Σ over the response positions of log p(label): (batch,) float32 nats, from a batch of
    "input_ids", "labels" and "response_mask" (batch, seq) on the model's device."""
    log_probs = get_response_log_probs(model, batch["input_ids"], batch["labels"])["log_probs"]
    return torch.where(batch["response_mask"], log_probs, 0).sum(-1)


def compute_per_instance_dpo_loss(
    lm: nn.Module,
    lm_ref: nn.Module,
    tokenizer: Tokenizer,
    beta: float,
    prompt: str,
    response_chosen: str,
    response_rejected: str,
) -> Tensor:
    """DPO's loss -log σ(β·h) of one pair (CS336 a5): the prompt formatted with the Alpaca
    template, <|endoftext|> after each response, h from the summed response log-probs under
    `lm` (with gradients) and `lm_ref` (without). A scalar tensor on `lm`'s device."""
    check_beta(beta)
    pad_token_id(tokenizer)  # the clear error for a tokenizer without <|endoftext|>
    rows = preference_rows([(prompt, response_chosen, response_rejected)], tokenizer)
    batch = rows.batch([0, 1])
    policy = sequence_log_probs(lm, _to(batch, _device(lm)))
    with torch.no_grad():
        ref = sequence_log_probs(lm_ref, _to(batch, _device(lm_ref))).to(policy.device)
    loss, _ = dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta)
    return loss


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
