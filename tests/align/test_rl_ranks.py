"""Rank-aware GRPO rollouts (lmforge.align.rl, module notes 1): under data parallelism rank r of
W draws slice [r·P, (r+1)·P) of the one draw of W·P prompts, so the ranks' prompts are disjoint
and together equal a single rank's draw for a W-times larger batch; every group of G rollouts
stays on one rank, so group-normalised advantages never mix ranks. Reference: the single-rank
objective with prompts_per_rollout = W·P, and the tokenizer's encoding of each drawn prompt.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.align.rl import GRPOObjective, derived_seed
from lmforge.align.rl_tasks import load_task
from lmforge.align.synthetic import format_example
from lmforge.config import GRPOConfig, RunConfig, TrainConfig
from lmforge.errors import InvalidArgument
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer

MODEL = ModelConfig(vocab_size=257, context_length=96, d_model=32, num_layers=2, num_heads=4)


def tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM.from_config(MODEL)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def code_reward(response: str, truth: str) -> dict:
    score = sum(map(ord, response[:2])) % 5 / 4
    return {"reward": score, "format_reward": 1.0, "answer_reward": score}


def grpo(prompts: int) -> GRPOConfig:
    return GRPOConfig(task="synthetic:addition;digits=2", reward="exact", group_size=3,
                      prompts_per_rollout=prompts, max_new_tokens=4, eval_examples=0,
                      truncated="keep", temperature=2.0)


def make(tok, prompts: int, rank: int = 0, world: int = 1) -> GRPOObjective:
    g = grpo(prompts)
    return GRPOObjective(tiny_model(), tok, load_task(g.task, 0), code_reward, g,
                         micro_batch_size=64, seed=7, template="plain", rank=rank,
                         world_size=world)


def questions(obj: GRPOObjective, index: int) -> list[str]:
    return [e["question"] for e in obj.prompt_examples(index)]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_draw_disjoint_slices_of_one_prompt_stream(tok, world):
    single = make(tok, 2 * world)
    for index in range(4):
        per_rank = [questions(make(tok, 2, r, world), index) for r in range(world)]
        assert all(len(q) == 2 for q in per_rank)
        union = [q for qs in per_rank for q in qs]
        assert union == questions(single, index)  # the W·P draw, in order
        assert len(set(union)) == 2 * world  # disjoint
    assert questions(make(tok, 2, 0, world), 0) != questions(make(tok, 2, 0, world), 1)


def test_one_rank_draws_as_before(tok):
    """world_size 1: the draw of P prompts seeded (seed, index), as before ranks existed."""
    obj = make(tok, 3)
    for index in range(3):
        assert obj.prompt_examples(index) == obj.task.sample(3, derived_seed(7, index, 0))


def test_each_rank_rolls_out_whole_groups_of_its_own_prompts(tok):
    world, g = 2, 3
    seen = []
    for rank in range(world):
        obj = make(tok, 2, rank, world)
        obj.next_batches(0, 1)
        buf = obj.buffer  # group-major rows: prompt i's G rollouts are rows i·G .. i·G + G-1
        prompts = [tok.encode(format_example(e, "plain")) for e in obj.prompt_examples(0)]
        assert len(buf["input_ids"]) == len(prompts) * g
        for row in range(len(buf["input_ids"])):
            start = int(buf["response_mask"][row].nonzero()[0]) + 1  # prompt length
            assert buf["input_ids"][row, :start].tolist() == prompts[row // g]
        adv = buf["advantages"].view(-1, g)
        assert torch.allclose(adv.sum(1), torch.zeros(len(prompts)), atol=1e-5)  # per group
        assert adv.abs().sum() > 0
        seen.append(buf["input_ids"])
    assert not torch.equal(seen[0], seen[1])


def test_rank_comes_from_torchrun_environment_and_is_checked(tok, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig(model=MODEL, grpo=grpo(2), train=RunConfig(batch_size=4, seed=7))
    obj = GRPOObjective.from_config(config, tiny_model(), tok, "cpu")
    assert (obj.rank, obj.world_size) == (1, 2)
    assert questions(obj, 0) == questions(make(tok, 4), 0)[2:]
    with pytest.raises(InvalidArgument, match="rank"):
        make(tok, 2, rank=2, world=2)
