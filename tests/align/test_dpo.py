"""DPO: losses against hand-computed values and TRL, the objective's reference, data and runs.

References: the formulas evaluated with `math` on chosen numbers; a direct forward pass of the
model for the per-instance loss; TRL's `DPOTrainer` loss (loss types "sigmoid", "ipo",
"sigmoid_norm") on the same log-probs and on our models exported to HuggingFace; per-batch
reference log-probs for the precomputed table; an uninterrupted run for resume.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lmforge.align.dpo import (
    compute_per_instance_dpo_loss,
    dpo_loss,
    preference_rows,
    sequence_log_probs,
)
from lmforge.align.dpo_objective import DPOObjective, read_preference_pairs, split_pairs
from lmforge.align.objectives import align_config, run_objective
from lmforge.align.templates import ALPACA_TEMPLATE
from lmforge.config import ConfigError, TrainConfig, load_config, save_config
from lmforge.errors import InputError, InvalidArgument
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint, save_run_checkpoint
from lmforge.train.metrics import read_metrics
from lmforge.train.optim import AdamW

EOT = 256


def tiny_model(seed: int = 0, context: int = 256) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM.from_config(ModelConfig(vocab_size=257, context_length=context,
                                                 d_model=32, num_layers=2, num_heads=4))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def nll_sigmoid(x: float) -> float:
    """-log σ(x), by hand."""
    return math.log(1 + math.exp(-x))


# Two pairs: policy / reference log-probs of chosen and rejected; β = 0.5.
PC, PR, RC, RR = [-1.0, -4.0], [-3.0, -2.0], [-2.0, -3.0], [-2.0, -2.0]
LC, LR = [2, 4], [1, 2]  # response lengths (tokens)


def loss_of(loss_type: str, lengths: bool = False, beta: float = 0.5):
    t = [torch.tensor(v) for v in (PC, PR, RC, RR)]
    kw = {"chosen_lengths": torch.tensor(LC), "rejected_lengths": torch.tensor(LR)} \
        if lengths else {}
    return dpo_loss(*t, beta=beta, loss_type=loss_type, **kw)


def test_sigmoid_loss_and_metadata_equal_hand_values():
    # logratios: chosen (1, -1), rejected (-1, 0) → h = (2, -1)
    loss, meta = loss_of("sigmoid")
    assert loss.item() == pytest.approx((nll_sigmoid(1.0) + nll_sigmoid(-0.5)) / 2, rel=1e-6)
    assert meta["losses"].tolist() == pytest.approx([nll_sigmoid(1.0), nll_sigmoid(-0.5)])
    assert meta["rewards_chosen"].tolist() == [0.5, -0.5]
    assert meta["rewards_rejected"].tolist() == [-0.5, 0.0]
    assert meta["margins"].tolist() == [1.0, -0.5]
    assert meta["accuracy"].item() == 0.5


def test_ipo_loss_equals_hand_values_summed_and_per_token():
    # Eq. 17 on the sums: h = (2, -1), target 1/(2β) = 1 → ((2-1)² + (-1-1)²) / 2
    assert loss_of("ipo")[0].item() == pytest.approx(2.5)
    # per-token logratios: chosen (1/2, -1/4), rejected (-1/1, 0/2) → h = (1.5, -0.25)
    assert loss_of("ipo", lengths=True)[0].item() == pytest.approx((0.5**2 + 1.25**2) / 2)


def test_length_normalized_loss_equals_hand_values():
    loss, meta = loss_of("length_normalized", lengths=True)
    assert loss.item() == pytest.approx((nll_sigmoid(0.75) + nll_sigmoid(-0.125)) / 2, rel=1e-6)
    assert meta["margins"].tolist() == [1.0, -0.5]  # rewards stay the summed ones
    with pytest.raises(InvalidArgument, match="needs chosen_lengths"):
        loss_of("length_normalized")


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_beta_must_be_positive_everywhere(beta, tok):
    with pytest.raises(InvalidArgument, match="beta must be a finite number > 0"):
        loss_of("sigmoid", beta=beta)
    with pytest.raises(InvalidArgument, match="beta"):
        compute_per_instance_dpo_loss(tiny_model(), tiny_model(), tok, beta, "p", "a", "b")
    with pytest.raises(ConfigError, match=r"dpo\.beta must be a finite number > 0"):
        TrainConfig.from_dict({"model": dict(vocab_size=257, context_length=8, d_model=8,
                                             num_layers=1, num_heads=2), "dpo": {"beta": beta}})


def test_bad_loss_arguments_are_clear_errors():
    t = torch.zeros(2)
    with pytest.raises(InvalidArgument, match="unknown DPO loss_type"):
        dpo_loss(t, t, t, t, 0.1, "hinge")
    with pytest.raises(InvalidArgument, match="one value per pair"):
        dpo_loss(t, t, t, torch.zeros(3), 0.1)
    with pytest.raises(InvalidArgument, match=">= 1 token"):
        dpo_loss(t, t, t, t, 0.1, "ipo", torch.tensor([1, 0]), torch.tensor([1, 1]))


def direct_response_logp(model, prompt_ids: list[int], response_ids: list[int],
                         include_prompt: bool = False) -> float:
    """Σ log p(token | prefix) over the response (or every token after the first), one forward."""
    ids = prompt_ids + response_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    start = 1 if include_prompt else len(prompt_ids)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


@pytest.mark.parametrize("include_prompt", [False, True])
def test_per_instance_loss_equals_a_direct_forward(tok, include_prompt):
    """CS336's loss from log-probs read off one forward pass. Including the prompt's tokens
    changes nothing: they are common to both responses and cancel in h."""
    lm, lm_ref, beta = tiny_model(0), tiny_model(1), 0.7
    prompt, chosen, rejected = "Name a fruit.", "apple", "a rock"
    p = tok.encode(ALPACA_TEMPLATE.format(instruction=prompt))
    logp = {(m, r): direct_response_logp(m, p, [*tok.encode(r), EOT], include_prompt)
            for m in (lm, lm_ref) for r in (chosen, rejected)}
    h = (logp[lm, chosen] - logp[lm_ref, chosen]) - (logp[lm, rejected] - logp[lm_ref, rejected])
    loss = compute_per_instance_dpo_loss(lm, lm_ref, tok, beta, prompt, chosen, rejected)
    assert loss.item() == pytest.approx(nll_sigmoid(beta * h), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in lm_ref.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.parameters())


# ------------------------------------------------------------------------------------- TRL


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory, tok):
    """Our policy and reference, their HF exports and a TRL DPOTrainer over them."""
    pytest.importorskip("trl", reason="trl is a test extra (pip install trl --no-deps)")
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from lmforge.infer.hf_io import export_hf

    root = tmp_path_factory.mktemp("trl")
    ours, hf = [], []
    for name, seed in (("policy", 0), ("reference", 1)):
        model = tiny_model(seed)
        run = root / name
        run.mkdir()
        save_config(TrainConfig(model=model.config), run / "config.toml")
        save_run_checkpoint(run, 1, model, AdamW(model.parameters()), {})
        tok.save(run / "tokenizer")
        ours.append(model.eval())
        exported = export_hf(run, root / f"{name}_hf")
        hf.append(transformers.AutoModelForCausalLM.from_pretrained(exported))
    pairs = [("Add 2 and 2.", "4", "five"), ("Say hi.", "hi there", "no"),
             ("Name a colour.", "blue", "a car, I think")]
    prompts = [ALPACA_TEMPLATE.format(instruction=p) for p, _, _ in pairs]  # formatted for TRL
    data = Dataset.from_list([{"prompt": q, "chosen": c, "rejected": r}
                              for q, (_, c, r) in zip(prompts, pairs, strict=True)])
    args = DPOConfig(output_dir=str(root / "out"), beta=0.3, loss_type=["sigmoid"],
                     precompute_ref_log_probs=False, report_to=[], use_cpu=True,
                     per_device_train_batch_size=len(pairs), max_length=None, bf16=False)
    trainer = DPOTrainer(model=hf[0], ref_model=hf[1], args=args, train_dataset=data,
                         processing_class=transformers.AutoTokenizer.from_pretrained(
                             root / "policy_hf"))
    trainer.model.eval()
    return SimpleNamespace(trainer=trainer, policy=ours[0], reference=ours[1], pairs=pairs)


TRL_NAMES = {"sigmoid": "sigmoid", "ipo": "ipo", "length_normalized": "sigmoid_norm"}


def trl_loss(trainer, loss_type: str, beta: float, model, inputs: dict) -> tuple[float, dict]:
    trainer.loss_types, trainer.beta = [TRL_NAMES[loss_type]], beta
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["eval"].items()}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "length_normalized"])
def test_loss_equals_trls_on_the_same_log_probs(trl_setup, loss_type):
    """TRL's loss code fed per-token log-probs we choose (a stand-in for its model forward)."""
    g = torch.Generator().manual_seed(3)
    B, T = 4, 9
    completion = torch.zeros(2 * B, T, dtype=torch.long)
    lengths = torch.randint(1, 6, (2 * B,), generator=g)
    for row, n in enumerate(lengths.tolist()):
        completion[row, T - n:] = 1  # the prompt first, then n completion tokens
    token_logps = -5 * torch.rand(2 * B, T - 1, generator=g) * completion[:, 1:]
    ref = -30 * torch.rand(2 * B, generator=g)

    def fake_forward(**kwargs):
        zeros = torch.zeros(2 * B, T - 1)
        return SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())

    trainer = trl_setup.trainer
    inputs = {"input_ids": torch.zeros(2 * B, T, dtype=torch.long), "completion_mask": completion,
              "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
              "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    trainer.precompute_ref_logps = True
    try:
        expected, metrics = trl_loss(trainer, loss_type, 0.3, fake_forward, inputs)
    finally:
        trainer.precompute_ref_logps = False
    sums = token_logps.sum(-1)
    loss, meta = dpo_loss(sums[:B], sums[B:], ref[:B], ref[B:], 0.3, loss_type,
                          lengths[:B], lengths[B:])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert meta["margins"].mean().item() == pytest.approx(metrics["rewards/margins"], rel=1e-5)
    assert meta["accuracy"].item() == pytest.approx(metrics["rewards/accuracies"])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "length_normalized"])
def test_loss_equals_trls_on_the_same_hf_models(trl_setup, tok, loss_type):
    """TRL's DPOTrainer on our models exported to HF, against our loss on our own models."""
    s = trl_setup
    data = s.trainer.train_dataset  # in order (the trainer's dataloader shuffles)
    inputs = s.trainer.data_collator([data[i] for i in range(len(data))])
    expected, metrics = trl_loss(s.trainer, loss_type, 0.3, s.trainer.model, inputs)
    rows = preference_rows(s.pairs, tok)
    batch = rows.batch(range(len(rows)))
    with torch.no_grad():
        policy, ref = sequence_log_probs(s.policy, batch), sequence_log_probs(s.reference, batch)
    lengths, B = batch["response_mask"].sum(-1), len(s.pairs)
    loss, meta = dpo_loss(policy[:B], policy[B:], ref[:B], ref[B:], 0.3, loss_type,
                          lengths[:B], lengths[B:])
    assert abs(meta["margins"]).max() > 0.01  # the two models differ: not a trivial log 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert policy[:B].mean().item() == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert meta["margins"].mean().item() == pytest.approx(metrics["rewards/margins"], rel=1e-4)


# ----------------------------------------------------------------------- data and objective


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def synthetic_pairs(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"Q{i + offset}: agree?", "chosen": " yes", "rejected": " no way"}
            for i in range(n)]


@pytest.mark.parametrize("rows, message", [
    ([], "holds no preference pairs"),
    (["{not json"], r"d\.jsonl:1: not valid JSON"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
     r"d\.jsonl:2: 'rejected' is missing"),
    ([{"prompt": "p", "chosen": 3, "rejected": "b"}], r"d\.jsonl:1: 'chosen' is a int"),
    ([{"prompt": " ", "chosen": "a", "rejected": "b"}], r"d\.jsonl:1: the prompt is empty"),
    ([{"prompt": "p", "chosen": "a", "rejected": "a"}], r"d\.jsonl:1: .*the same text"),
    (["[1, 2]"], r"d\.jsonl:1: a pair is a JSON object"),
])
def test_malformed_or_empty_pair_files_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        read_preference_pairs(write_jsonl(tmp_path / "d.jsonl", rows))


def test_a_pair_longer_than_the_context_names_its_line(tmp_path, tok):
    rows = [*synthetic_pairs(2), {"prompt": "long " * 40, "chosen": "a", "rejected": "b"}]
    pairs = read_preference_pairs(write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(InputError, match=r"d\.jsonl:3 needs .* more than seq_len = 64"):
        preference_rows(pairs, tok, 64, "plain")


def test_a_held_out_slice_needs_two_pairs():
    with pytest.raises(InputError, match=r"at least 2 pairs to split, d\.jsonl:1 is the only"):
        split_pairs([("p", "a", "b", "d.jsonl:1")], 0.5, seed=0)


def make_objective(tok, precompute: bool) -> DPOObjective:
    pairs = [(f"Q{i}: agree?", " yes" * (i % 3 + 1), " no", f"d.jsonl:{i + 1}")
             for i in range(7)]
    rows = preference_rows(pairs, tok, 64, "plain")
    val = preference_rows(pairs[:5], tok, 256, "alpaca")
    return DPOObjective(rows, tiny_model(1).requires_grad_(False), beta=0.2,
                        batch_size=3, seed=4, device=torch.device("cpu"), val_rows=val,
                        eval_batch_size=2, precompute=precompute)


def test_precomputed_and_per_batch_references_give_identical_losses(tok):
    policy = tiny_model(0)
    pre, per = make_objective(tok, True), make_objective(tok, False)
    assert pre.reference is None and per.reference is not None  # the table replaced the model
    with torch.no_grad():
        for _ in range(pre.per_epoch):  # the first epoch: the table's own batches
            a, b = pre.next_batches(0, 1)[0], per.next_batches(0, 1)[0]
            assert torch.equal(a["pairs"], b["pairs"])
            assert torch.equal(a["ref_logps"], b["ref_logps"])
            assert torch.equal(pre.loss(policy, a), per.loss(policy, b))
        later_a, later_b = pre.next_batches(0, 1)[0], per.next_batches(0, 1)[0]  # epoch 2
        torch.testing.assert_close(pre.loss(policy, later_a), per.loss(policy, later_b))
    assert pre.step_metrics() == per.step_metrics()
    assert pre.evaluate(policy) == per.evaluate(policy)


def test_precomputed_table_holds_each_pairs_reference_log_probs(tok):
    """Each table entry is the reference's response log-prob of that row computed alone."""
    objective = make_objective(tok, True)
    reference = tiny_model(1)
    for row in (0, 3, 7, 13):
        alone = sequence_log_probs(reference, objective.rows.batch([row]))
        assert objective.table[row].item() == pytest.approx(alone.item(), rel=1e-5)


def test_epochs_cover_every_pair_once_and_the_state_resumes_the_order(tok):
    objective = make_objective(tok, True)
    seen = torch.cat([b["pairs"] for b in objective.next_batches(0, objective.per_epoch)])
    assert sorted(seen.tolist()) == list(range(7))
    objective.next_batches(1, 1)
    state = json.loads(json.dumps(objective.state_dict()))
    want = objective.next_batches(2, 2)
    again = make_objective(tok, True)
    again.load_state_dict(state)
    got = again.next_batches(2, 2)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(
        x["ref_logps"], y["ref_logps"]) for x, y in zip(want, got, strict=True))


def test_from_config_keeps_the_policy_trainable_and_refuses_another_tokenizer(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(6))
    config = TrainConfig.from_dict({"model": tiny_model().config.to_dict(), "dpo": {
        "data": str(data), "val_fraction": 0.34, "template": "plain"}})
    policy = tiny_model(0)
    objective = DPOObjective.from_config(config, policy, tok, torch.device("cpu"))
    assert all(p.requires_grad for p in policy.parameters())
    assert (objective.pairs, len(objective.val_rows) // 2) == (4, 2)
    other = Tokenizer({i: bytes([255 - i]) for i in range(256)}, [], ["<|endoftext|>"])
    run = tmp_path / "ref"
    run.mkdir()
    save_config(TrainConfig(model=ModelConfig(**{**policy.config.to_dict(), "vocab_size": 258})),
                run / "config.toml")
    with pytest.raises(ConfigError, match="vocab_size 258 but the policy has 257"):
        _with_reference(config, run, policy, tok)
    save_config(TrainConfig(model=policy.config), run / "config.toml")
    save_run_checkpoint(run, 1, policy, AdamW(policy.parameters()), {})
    other.save(run / "tokenizer")
    with pytest.raises(ConfigError, match="another tokenizer than the policy"):
        _with_reference(config, run, policy, tok)


def _with_reference(config: TrainConfig, reference: Path, policy, tok) -> DPOObjective:
    config = copy.deepcopy(config)
    config.dpo.reference = str(reference)
    return DPOObjective.from_config(config, policy, tok, torch.device("cpu"))


# ------------------------------------------------------------------------ through the trainer


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tok) -> Path:
    """A base run dir (random weights, the byte tokenizer) that DPO starts from."""
    run = tmp_path_factory.mktemp("base") / "run"
    run.mkdir()
    model = tiny_model(0, context=64)
    save_config(TrainConfig(model=model.config), run / "config.toml")
    save_run_checkpoint(run, 1, model, AdamW(model.parameters()), {})
    tok.save(run / "tokenizer")
    return run


def dpo_config(base: Path, tmp: Path, *overrides: str) -> TrainConfig:
    data = write_jsonl(tmp / "train.jsonl", synthetic_pairs(8))
    val = write_jsonl(tmp / "val.jsonl", synthetic_pairs(4, offset=100))
    return align_config("dpo", base, str(data), overrides=[
        f"dpo.val_data='{val}'", "dpo.template='plain'", "dpo.beta=0.5", "optim.lr=3e-3",
        "optim.min_lr=3e-3", "train.batch_size=4", "train.max_steps=12", "train.log_interval=1",
        "train.eval_interval=6", "train.checkpoint_interval=4", "train.threads=1", *overrides])


def test_dpo_run_raises_preference_accuracy_to_one(base_run, tmp_path):
    config = dpo_config(base_run, tmp_path, "dpo.precompute_reference=false")
    run_objective("dpo", config, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if "pref_acc" in r]
    val = [r for r in records if "val_pref_acc" in r]
    assert train[0]["pref_acc"] == 0.0  # step 1 is scored before any update: π = π_ref
    assert train[-1]["pref_acc"] == 1.0 and train[-1]["reward_margin"] > 0
    assert val[-1]["val_pref_acc"] == 1.0 and val[-1]["val_dpo_loss"] < math.log(2)
    assert train[-1]["epoch"] == 6.0  # 12 steps of 4 pairs over 8 pairs


def test_resume_reproduces_the_uninterrupted_run(base_run, tmp_path, monkeypatch):
    run_objective("dpo", dpo_config(base_run, tmp_path), tmp_path / "full", progress=False)
    real_step = loop.Trainer.train_step

    def crash_at_6(self):
        if self.step == 6:  # checkpoint at 4: steps 5 and 6 are redone
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_6)
    with pytest.raises(RuntimeError, match="simulated"):
        run_objective("dpo", dpo_config(base_run, tmp_path), tmp_path / "cut", progress=False)
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    resumed = load_config(tmp_path / "cut" / "config.toml")
    run_objective("dpo", resumed, tmp_path / "cut", resume=True, progress=False)

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "tokens_per_s")}
                for r in read_metrics(run / "metrics.jsonl")]

    full = records(tmp_path / "full")
    assert records(tmp_path / "cut") == full
    assert any("val_pref_acc" in r for r in full) and all(r["grad_norm"] > 0 for r in full
                                                             if "grad_norm" in r)
    a = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
