"""GRPO step speed-ups that must not change results (lmforge.align.rl, module notes 5).

Skipping the old-log-prob forward when a rollout batch is one optimizer step: the reference is
the same objective with the forward run (`skip_old_log_probs = False`) on the same weights and
seeds, whose rollouts are token-identical; losses and gradients must agree to float rounding,
and the loss value must be the identity of ratio 1 (grpo_clip with π_old = π_θ is
-Σ A·ratio aggregated: -mean(A) for the per-sequence mean). The entropy metric, now computed
on response tokens only, is checked against `get_response_log_probs`' full token entropy.
The prompt-shared training forward (`response_window_logits`) against the full forward of the
same rows: logits at the response positions, and each micro-batch's loss and gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.align.rl import GRPOObjective
from lmforge.align.rl_tasks import load_task
from lmforge.align.rollouts import Rollout, pack_rollouts, response_window_logits
from lmforge.align.sft import get_response_log_probs
from lmforge.config import GRPOConfig
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer


def tiny_model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM.from_config(ModelConfig(vocab_size=257, context_length=96, d_model=32,
                                                 num_layers=2, num_heads=4))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def digit_reward(response: str, truth: str) -> dict:
    """A graded score of the first characters' code points (random bytes vary within a group)."""
    score = sum(map(ord, response[:2])) % 5 / 4 + float(response[:1] == truth[:1])
    return {"reward": score, "format_reward": 1.0, "answer_reward": float(score > 1)}


def make(tok, model, skip: bool, micro: int = 4, **grpo) -> GRPOObjective:
    settings = dict(task="synthetic:addition;digits=1", reward="exact", group_size=4,
                    prompts_per_rollout=2, max_new_tokens=6, eval_examples=0,
                    truncated="keep", temperature=2.0)
    settings.update(grpo)
    g = GRPOConfig(**settings)  # type: ignore[arg-type]
    obj = GRPOObjective(model, tok, load_task(g.task, 0), digit_reward, g,
                        micro_batch_size=micro, seed=5, template="plain")
    obj.skip_old_log_probs = skip
    return obj


def step_loss_and_grads(obj: GRPOObjective, n: int) -> tuple[list[dict], torch.Tensor, list]:
    batches = obj.next_batches(0, n)
    obj.model.zero_grad()
    loss = sum(obj.loss(obj.model, b) for b in batches) / len(batches)
    loss.backward()
    return batches, loss.detach(), [p.grad.clone() for p in obj.model.parameters()]


@pytest.mark.parametrize("aggregation,kl_coef", [("sequence_mean", 0.0), ("token_mean", 0.0),
                                                 ("constant", 0.0), ("sequence_mean", 0.1)])
def test_skipping_old_log_probs_keeps_losses_and_gradients(tok, aggregation, kl_coef):
    """8 responses in two micro-batches of 4, one optimizer step per rollout batch."""
    base = tiny_model()
    fast = make(tok, copy.deepcopy(base), True, aggregation=aggregation, kl_coef=kl_coef)
    ref = make(tok, copy.deepcopy(base), False, aggregation=aggregation, kl_coef=kl_coef)
    fb, fast_loss, fast_grads = step_loss_and_grads(fast, 2)
    rb, ref_loss, ref_grads = step_loss_and_grads(ref, 2)
    assert len(fb) == 2 and len(fast.pending) == 0  # the whole rollout batch was this step
    assert "old_log_probs" not in fast.buffer and "old_log_probs" in ref.buffer
    for a, b in zip(fb, rb, strict=True):  # the same rollouts (seeded, same weights)
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["advantages"], b["advantages"])
    assert torch.allclose(fast_loss, ref_loss, atol=1e-6, rtol=1e-5)
    for g_fast, g_ref in zip(fast_grads, ref_grads, strict=True):
        assert torch.allclose(g_fast, g_ref, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in fast_grads)  # a real gradient was compared
    if aggregation == "sequence_mean" and kl_coef == 0:  # ratio 1: the loss is -mean(A)
        adv = torch.cat([b["advantages"] for b in fb])
        assert torch.allclose(fast_loss, -adv.mean(), atol=1e-6)
    assert fast.step_metrics()["clip_frac"] == 0.0


@pytest.mark.parametrize("setting", [{"epochs_per_rollout": 2}, {"micro": 3}])
def test_old_log_probs_still_run_when_a_rollout_batch_spans_steps(tok, setting):
    """Off-policy epochs, or more micro-batches than one step takes: π_θ moves in between."""
    micro = setting.pop("micro", 4)
    obj = make(tok, tiny_model(), True, micro=micro, **setting)
    batches = obj.next_batches(0, 2)
    assert len(obj.pending) >= 1 and all("old_log_probs" in b for b in batches)
    with torch.no_grad():
        for b in batches:
            lp = get_response_log_probs(obj.model, b["input_ids"], b["labels"])["log_probs"]
            mask = b["response_mask"]
            assert torch.allclose(lp[mask], b["old_log_probs"][mask], atol=1e-6)


def test_entropy_metric_is_the_mean_over_response_tokens(tok):
    obj = make(tok, tiny_model(), True)
    batches = obj.next_batches(0, 2)
    total = weight = 0.0
    with torch.no_grad():
        for b in batches:
            obj.loss(obj.model, b)
            ent = get_response_log_probs(obj.model, b["input_ids"], b["labels"],
                                         return_token_entropy=True)["token_entropy"]
            total += float(ent[b["response_mask"]].sum())
            weight += float(b["response_mask"].sum())
    assert obj.step_metrics()["entropy"] == pytest.approx(total / weight, rel=1e-5)


# ------------------------------------------------------------------ the prompt-shared forward


@pytest.mark.parametrize("settings", [
    {"aggregation": "sequence_mean"},
    {"aggregation": "token_mean", "epochs_per_rollout": 2, "micro": 3},  # groups cut, old lp
    {"aggregation": "constant", "kl_coef": 0.1, "micro": 5},
])
def test_prompt_shared_forward_keeps_losses_and_gradients(tok, settings):
    """Prompts of different lengths (1- and 2-digit numbers to sort), shared by groups of 4 and
    cut across micro-batches: each micro-batch's loss and gradients equal the full forward's."""
    micro = settings.pop("micro", 4)
    base = tiny_model()
    task = "synthetic:sorting;length=2;max_value=30"
    fast = make(tok, copy.deepcopy(base), True, micro=micro, task=task, **settings)
    ref = make(tok, copy.deepcopy(base), True, micro=micro, task=task, **settings)
    ref.shared_prompt_forward = False
    lengths = set()
    for step in range(2):
        fb, rb = fast.next_batches(step, 2), ref.next_batches(step, 2)
        for a, b in zip(fb, rb, strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"])
            lengths |= {int(r.nonzero()[0]) for r in a["response_mask"]}
            losses, grads = [], []
            for obj, batch in ((fast, a), (ref, b)):
                obj.model.zero_grad()
                loss = obj.loss(obj.model, batch)
                loss.backward()
                losses.append(loss.detach())
                grads.append([p.grad.clone() for p in obj.model.parameters()])
            assert torch.allclose(losses[0], losses[1], atol=1e-6, rtol=1e-5)
            for g_fast, g_ref in zip(*grads, strict=True):
                assert torch.allclose(g_fast, g_ref, atol=1e-6, rtol=1e-4)
    assert len(lengths) > 1  # the prompts did differ in length
    assert fast.step_metrics()["entropy"] == pytest.approx(ref.step_metrics()["entropy"],
                                                           rel=1e-5)


def test_response_window_logits_equal_the_full_forward(tok):
    """Ragged prompts and responses, in a context (37 tokens) that the longest row fills."""
    torch.manual_seed(0)
    model = TransformerLM.from_config(ModelConfig(vocab_size=257, context_length=37, d_model=32,
                                                  num_layers=2, num_heads=4))
    prompts = [tok.encode("Question: What is 1 + 2?\nAnswer:"),
               tok.encode("Question: What is 31 + 2?\nAnswer:"), tok.encode("Hi")]
    rows = [Rollout(prompts[i], list(tok.encode(text)), text, False)
            for i, text in ((0, " 3"), (0, " 12 x"), (1, " 33"), (2, " yes"), (1, ""))]
    batch = pack_rollouts(rows[:4], pad_id=256)
    logits, cols = response_window_logits(model, batch["input_ids"], batch["response_mask"])
    full = model(batch["input_ids"])
    for i, r in enumerate(rows[:4]):
        start = len(r.prompt_ids) - 1
        assert cols[i, 0] == start
        n = len(r.response_ids)
        assert torch.allclose(logits[i, :n], full[i, start : start + n], atol=1e-5)
    empty = pack_rollouts(rows, pad_id=256)  # a row without response tokens: not applicable
    assert response_window_logits(model, empty["input_ids"], empty["response_mask"]) is None
    # a long prompt and, in another row, a long response: padded windows would pass the context
    far = pack_rollouts([rows[2], Rollout(prompts[2], [7] * 30, "", True)], pad_id=256)
    assert response_window_logits(model, far["input_ids"], far["response_mask"]) is None
