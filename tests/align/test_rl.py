"""GRPO's RL loop: rollouts through the one generation loop, the objective's batches, exact resume.

References: plain generation (`generate_batch`, no cache reuse) for the prefix-reused rollouts,
the generation loop's own log-probs for the packed training tensors, `compute_grpo_loss` on a
whole step for the micro-batch weights, `wilson_interval` for the held-out interval, and an
uninterrupted run for resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmforge.align import rl
from lmforge.align.grpo import compute_grpo_loss
from lmforge.align.objectives import align_config, run_objective
from lmforge.align.rl import GRPOObjective
from lmforge.align.rl_tasks import RLTask, load_task
from lmforge.align.rollouts import Rollout, pack_rollouts, sample_groups
from lmforge.align.sft import get_response_log_probs
from lmforge.align.synthetic import is_test_question
from lmforge.config import (
    DataConfig,
    GRPOConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.stats import wilson_interval
from lmforge.infer.batch import generate_batch, generate_batch_detailed
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.metrics import read_metrics

EOT = 256


def tiny_model(seed: int = 0, context: int = 96) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM.from_config(ModelConfig(vocab_size=257, context_length=context,
                                                 d_model=32, num_layers=2, num_heads=4))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def first_digit_reward(response: str, truth: str) -> dict:
    """1 when the response's first character is the answer's first digit (learnable fast)."""
    right = float(response[:1] == truth[:1])
    return {"reward": right, "format_reward": 1.0, "answer_reward": right}


def objective(tok, model=None, reward_fn=first_digit_reward, micro: int = 3,
              **grpo) -> GRPOObjective:
    settings = dict(task="synthetic:addition;digits=1", reward="exact", group_size=4,
                    prompts_per_rollout=2, max_new_tokens=4, eval_examples=6,
                    truncated="keep")
    settings.update(grpo)
    g = GRPOConfig(**settings)  # type: ignore[arg-type]
    return GRPOObjective(model or tiny_model(), tok, load_task(g.task, g.eval_examples),
                         reward_fn, g, micro_batch_size=micro, seed=3, template="plain")


# ------------------------------------------------------------------------------- rollouts


def test_prefix_reused_rollouts_equal_plain_generation(tok):
    model = tiny_model()
    prompts = [tok.encode("Question: What is 1 + 2?\nAnswer:"),
               tok.encode("Question: What is 3 + 40?\nAnswer:"), tok.encode("Q")]
    out = sample_groups(model, tok, prompts, 3, 7, temperature=0.0)
    plain = generate_batch(model, prompts, 7)
    assert [r.response_ids for r in out] == [ids for ids in plain for _ in range(3)]
    assert all(r.truncated and r.prompt_ids == prompts[i // 3] for i, r in enumerate(out))


def test_seeded_rollouts_repeat_and_vary_within_a_group(tok):
    model = tiny_model()
    prompts = [tok.encode("Question: What is 1 + 2?\nAnswer:")]
    a = sample_groups(model, tok, prompts, 4, 6, seed=1)
    assert [r.response_ids for r in a] == [r.response_ids for r in
                                           sample_groups(model, tok, prompts, 4, 6, seed=1)]
    assert len({tuple(r.response_ids) for r in a}) > 1


def test_stop_string_ends_a_rollout_and_stays_in_its_text(tok):
    model = tiny_model()
    prompt = tok.encode("Question: What is 7 + 8?\nAnswer:")
    ref = generate_batch(model, [prompt], 40)[0]
    k = next(i for i, t in enumerate(ref) if 33 <= t < 127 and chr(t) not in tok.decode(ref[:i]))
    stop = chr(ref[k])
    r = sample_groups(model, tok, [prompt], 2, 40, temperature=0.0, stop=[stop])[0]
    assert r.response_ids == ref[: k + 1] and not r.truncated
    assert r.text == tok.decode(ref[: k + 1]) and r.text.endswith(stop)


def test_eos_ends_a_rollout_and_is_trained_on(tok):
    model = tiny_model()
    prompt = tok.encode("Question: What is 7 + 8?\nAnswer:")
    ref = generate_batch(model, [prompt], 12)[0]
    eos = ref[5]
    k = ref.index(eos)
    r = sample_groups(model, tok, [prompt], 2, 12, temperature=0.0, eos_id=eos)[1]
    assert r.response_ids == [*ref[:k], eos] and not r.truncated
    assert r.text == tok.decode(ref[:k])


def test_packed_rollouts_score_the_sampled_tokens(tok):
    """The training forward on the packed tensors gives the generation loop's own log-probs."""
    model = tiny_model()
    prompts = [tok.encode("Question: What is 1 + 2?\nAnswer:"), tok.encode("Hi")]
    gens = generate_batch_detailed(model, prompts, 6, temperature=1.0, seed=0)
    rollouts = [Rollout(p, g.token_ids, "", True) for p, g in zip(prompts, gens, strict=True)]
    batch = pack_rollouts(rollouts, pad_id=EOT)
    with torch.no_grad():
        lp = get_response_log_probs(model, batch["input_ids"], batch["labels"])["log_probs"]
    for row, g in enumerate(gens):
        mask = batch["response_mask"][row]
        assert mask.sum() == len(g.token_ids)
        assert batch["labels"][row][mask].tolist() == g.token_ids
        assert torch.allclose(lp[row][mask], torch.tensor(g.logprobs), atol=1e-4)


# ------------------------------------------------------------------------------- tasks


def test_synthetic_task_knobs_and_disjoint_splits():
    task = load_task("synthetic:addition;digits=[3, 1]", 5)
    assert len(task.test) == 5 and all(is_test_question(e["question"]) for e in task.test)
    train = task.sample(20, seed=1)
    assert all(not is_test_question(e["question"]) for e in train)
    assert all(len(e["question"].split()[2]) == 3 for e in train)  # "What is 123 + 4?"
    assert train == task.sample(20, seed=1) and train != task.sample(20, seed=2)
    with pytest.raises(InvalidArgument, match="knob=VALUE"):
        load_task("synthetic:addition;digits", 5)


def test_jsonl_task_holds_out_test_questions_and_names_bad_lines(tmp_path):
    path = tmp_path / "rl.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(f"jsonl:{path}", 100)
    held = {e["question"] for e in task.test}
    assert held == {r["question"] for r in rows if is_test_question(r["question"])} != set()
    assert not held & {e["question"] for e in task.pool}
    path.write_text(json.dumps(rows[0]) + "\n" + '{"question": "x"}\n')
    with pytest.raises(InputError, match=r"rl.jsonl:2"):
        load_task(f"jsonl:{path}", 10)


def test_a_prompt_longer_than_the_context_is_a_clear_error(tok):
    with pytest.raises(InputError, match="context is 20 tokens"):
        objective(tok, tiny_model(context=20))


# ------------------------------------------------------------------------------- the objective


def cat_padded(batches: list[dict], key: str) -> torch.Tensor:
    """Micro-batches' (rows, width) tensors, right-padded to one width and concatenated."""
    width = max(b[key].shape[1] for b in batches)
    return torch.cat([torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]))
                      for b in batches])


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant"])
def test_steps_cover_each_epoch_and_weights_make_the_step_one_aggregate(tok, aggregation):
    """8 responses in micro-batches of 3 (3, 3, 2), two per step: the weighted micro-batch losses
    average to the aggregation over the whole step (what TrainStep's mean of them minimises)."""
    obj = objective(tok, epochs_per_rollout=2, aggregation=aggregation, max_new_tokens=6)
    sizes = []
    for step in range(4):
        batches = obj.next_batches(step, 2)
        sizes.append([len(b["advantages"]) for b in batches])
        with torch.no_grad():
            weighted = sum(obj.loss(obj.model, b) for b in batches) / len(batches)
            lp = get_response_log_probs(obj.model, cat_padded(batches, "input_ids"),
                                        cat_padded(batches, "labels"))["log_probs"]
            expected, _ = compute_grpo_loss(
                lp, cat_padded(batches, "response_mask"), "grpo_clip",
                advantages=torch.cat([b["advantages"] for b in batches]),
                old_log_probs=cat_padded(batches, "old_log_probs"), cliprange=0.2,
                aggregation=aggregation, normalize_constant=6.0)
        assert torch.allclose(weighted, expected, atol=1e-6)
    assert sizes == [[3, 3], [2], [3, 3], [2]]  # two epochs over one rollout batch of 8
    assert obj.rollouts == 1


def test_old_log_probs_are_the_policy_before_the_step(tok):
    obj = objective(tok)
    for b in obj.next_batches(0, 1):
        with torch.no_grad():
            lp = get_response_log_probs(obj.model, b["input_ids"], b["labels"])["log_probs"]
        mask = b["response_mask"]
        assert torch.equal(lp[mask], b["old_log_probs"][mask])
        obj.loss(obj.model, b)
    metrics = obj.step_metrics()
    assert metrics["clip_frac"] == 0.0 and metrics["entropy"] > 0
    assert {"reward", "accuracy", "format_reward", "response_len", "truncated",
            "skipped"} <= set(metrics)
    assert obj.step_metrics() == {}  # reset on read


def test_reward_failures_are_dropped_and_counted(tok):
    calls = []

    def flaky(response: str, truth: str) -> dict:
        calls.append(response)
        if len(calls) % 3 == 0:
            raise ValueError("verifier crashed")
        if len(calls) % 3 == 1:
            return {"reward": float("nan"), "format_reward": 0.0, "answer_reward": 0.0}
        return first_digit_reward(response, truth)

    obj = objective(tok, reward_fn=flaky, group_size=3)
    batches = obj.next_batches(0, 4)
    assert sum(len(b["advantages"]) for b in batches) == 2  # 6 rollouts, 4 failed
    assert obj.step_metrics()["skipped"] == 4.0


def test_a_reward_that_always_fails_stops_the_run_with_its_reason(tok):
    def broken(response: str, truth: str) -> dict:
        raise KeyError("answer")

    obj = objective(tok, reward_fn=broken)
    with pytest.raises(InputError, match="KeyError"):
        obj.next_batches(0, 1)
    assert obj.rollouts == rl.MAX_EMPTY_ROLLOUTS


@pytest.mark.parametrize("mode", ["mask", "penalize", "keep"])
def test_truncated_rollouts_are_masked_penalized_or_kept(tok, mode, monkeypatch):
    """Scripted rollouts, every other one truncated, all with reward 1 before the option."""
    def scripted(model, tokenizer, prompts, group_size, max_new_tokens, **kwargs):
        return [Rollout(p, [65 + j, EOT], f"{j}", truncated=j % 2 == 0)
                for p in prompts for j in range(group_size)]

    monkeypatch.setattr(rl, "sample_groups", scripted)
    always = lambda response, truth: {"reward": 1.0, "format_reward": 1.0,  # noqa: E731
                                      "answer_reward": 1.0}
    obj = objective(tok, reward_fn=always, truncated=mode, group_size=4)
    batches = obj.next_batches(0, 100)
    rewards = sorted(torch.cat([b["raw_rewards"] for b in batches]).tolist())
    first_tokens = sorted(torch.cat([b["labels"][b["response_mask"]].view(-1, 2)[:, 0]
                                     for b in batches]).tolist())
    if mode == "mask":  # only the 2 complete rollouts of each of the 2 groups train
        assert rewards == [1.0] * 4 and first_tokens == [66, 66, 68, 68]
    else:
        assert rewards == ([0.0] * 4 if mode == "penalize" else [1.0] * 4) + [1.0] * 4
        assert first_tokens == [65, 65, 66, 66, 67, 67, 68, 68]
    assert obj.step_metrics()["truncated"] == 0.5
    if mode == "mask":
        monkeypatch.setattr(rl, "sample_groups", lambda *a, **k: [
            Rollout(r.prompt_ids, r.response_ids, r.text, True) for r in scripted(*a, **k)])
        obj.pending = []
        with pytest.raises(InputError, match="truncated"):
            obj.next_batches(1, 1)


def test_heldout_accuracy_and_its_wilson_interval(tok):
    obj = objective(tok, eval_examples=9, max_new_tokens=3)
    prompts = obj.test_prompts
    greedy = generate_batch(obj.model, prompts, 3, eos_id=EOT)
    right = sum(tok.decode(g)[:1] == e["answer"][:1] for g, e in zip(greedy, obj.task.test,
                                                                     strict=True))
    scores = obj.evaluate(obj.model)
    assert scores["heldout_acc"] == right / 9
    assert (scores["heldout_acc_low"], scores["heldout_acc_high"]) == wilson_interval(right, 9)
    assert GRPOObjective(obj.model, tok, RLTask("none", []), first_digit_reward, obj.g,
                         micro_batch_size=2, template="plain").evaluate(obj.model) == {}


def test_kl_penalty_is_zero_at_the_start_and_the_reference_stays_frozen(tok):
    obj = objective(tok, kl_coef=0.5)
    assert obj.reference is not None and not any(p.requires_grad
                                                 for p in obj.reference.parameters())
    batch = obj.next_batches(0, 1)[0]
    assert torch.equal(batch["ref_log_probs"], batch["old_log_probs"])
    obj.loss(obj.model, batch)
    assert obj.step_metrics()["kl"] == 0.0


# ------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tok) -> Path:
    """A 1-step pre-trained run dir with the byte tokenizer: the base GRPO starts from."""
    root = tmp_path_factory.mktemp("base")
    tok.save(root / "tok")
    np.save(root / "train.npy", (np.arange(4000) * 7 % 251).astype(np.uint16))
    config = TrainConfig(
        model=ModelConfig(vocab_size=257, context_length=64, d_model=32, num_layers=2,
                          num_heads=4),
        data=DataConfig(train=str(root / "train.npy"), tokenizer=str(root / "tok")),
        optim=OptimConfig(warmup_iters=0), train=RunConfig(max_steps=1, batch_size=2, threads=1))
    loop.train(config, root / "run", progress=False)
    return root / "run"


def grpo_config(base: Path, *overrides: str) -> TrainConfig:
    return align_config("grpo", base, "synthetic:addition;digits=1", overrides=[
        "grpo.reward='exact'", "grpo.group_size=3", "grpo.prompts_per_rollout=2",
        "grpo.max_new_tokens=3", "grpo.epochs_per_rollout=2", "grpo.truncated='keep'",
        "grpo.eval_examples=4", "train.batch_size=2", "train.grad_accum_steps=2",
        "train.max_steps=5", "train.checkpoint_interval=2", "train.eval_interval=2",
        "train.log_interval=1", "train.threads=1", "optim.lr=3e-3", *overrides])


def test_resume_inside_a_rollout_batch_reproduces_the_uninterrupted_run(base_run, tmp_path,
                                                                        monkeypatch):
    """6 responses per rollout batch, 2 epochs, micro-batches of 2, 2 per step: 2 steps per
    epoch, 4 per rollout batch. A crash in step 4 resumes from the checkpoint of step 2, in
    the middle of the first rollout batch (its second epoch still to come)."""
    def first_byte(response: str, truth: str) -> dict:  # graded: a gradient every step
        value = response.encode()[0] / 255 if response else 0.0
        return {"reward": value, "format_reward": 1.0, "answer_reward": float(value > 0.5)}

    monkeypatch.setattr(rl, "get_reward_fn", lambda name: first_byte)
    config = grpo_config(base_run)
    run_objective("grpo", config, tmp_path / "full", progress=False)
    real_step = loop.Trainer.train_step

    def crash_at_3(self):
        if self.step == 3:
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated"):
        run_objective("grpo", grpo_config(base_run), tmp_path / "cut", progress=False)
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    resumed = load_config(tmp_path / "cut" / "config.toml")
    run_objective("grpo", resumed, tmp_path / "cut", resume=True, progress=False)

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "tokens_per_s")}
                for r in read_metrics(run / "metrics.jsonl")]

    full, cut = records(tmp_path / "full"), records(tmp_path / "cut")
    assert cut == full
    assert all(r["grad_norm"] > 0 for r in full if "grad_norm" in r)
    assert any("reward" in r for r in full) and any("heldout_acc" in r for r in full)
    a = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
