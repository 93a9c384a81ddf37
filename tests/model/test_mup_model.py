"""µP (`model.parametrization = "mup"`): multipliers, init, per-layer learning rates, export.

References: SP itself (at width multiplier m = 1 µP must be SP bit for bit); the attention
formula softmax(scale · q kᵀ + mask) v written out by hand; the plain SP model loaded with the
multipliers folded into its weights (an identity: (W/m)·h = (W·h)/m, (c·q)·kᵀ/√d = scale·q·kᵀ);
Adam's first step, which moves every weight by lr · g/(|g| + ε) ≈ lr, so it reads off each
parameter's learning rate; the `mup` package's own `MuAdamW` grouping (when installed) and
`transformers`' Llama for the export.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config import OptimConfig, RunConfig, TrainConfig
from lmforge.errors import InvalidArgument
from lmforge.infer.batch import prefill
from lmforge.infer.fast_decode import DecodeStep
from lmforge.model import ModelConfig, TransformerLM
from lmforge.model.attention import causal_attention
from lmforge.model.layers import scaled_dot_product_attention
from lmforge.train.loss import cross_entropy
from lmforge.train.step import TrainStep, decay_groups, make_optimizer, model_lr_scales

V, T = 61, 16


def mup_model(d_model=64, base=16, seed=0, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(V, T, d_model, 2, 4, parametrization="mup", mup_base_width=base,
                         **switches)


def batch(seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, T), generator=g), torch.randint(0, V, (n, T), generator=g)


@pytest.mark.parametrize("settings, message", [
    ({"parametrization": "mup"}, "needs model.mup_base_width"),
    ({"parametrization": "mup", "mup_base_width": 0}, "mup_base_width must be a positive"),
    ({"parametrization": "mup", "mup_base_width": 8.5}, "mup_base_width must be a positive"),
    ({"parametrization": "mup", "mup_base_width": 16, "tie_embeddings": True}, "untie"),
    ({"parametrization": "mu-p"}, "model.parametrization = 'mu-p' is not one of sp, mup"),
])
def test_bad_mup_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(InvalidArgument, match=message):
        ModelConfig(V, T, 64, 2, 4, **settings)


def test_multipliers_follow_the_width_multiplier():
    c = ModelConfig(V, T, 256, 2, 4, parametrization="mup", mup_base_width=32)  # m = 8
    assert c.width_mult == 8.0 and c.output_multiplier == 0.125
    base_head_dim = 32 / 4
    assert c.attention_scale == pytest.approx(math.sqrt(base_head_dim) / c.head_dim)  # ∝ 1/d
    assert ModelConfig(V, T, 256, 2, 4).attention_scale is None  # SP: the backends' 1/√d


def test_mup_at_the_base_width_is_sp_bit_for_bit():
    """Same seed, m = 1: identical logits, optimizer groups and weights after three steps."""
    torch.manual_seed(0)
    sp = TransformerLM(V, T, 32, 2, 4)
    mup = mup_model(d_model=32, base=32)
    x, y = batch()
    assert torch.equal(sp(x), mup(x))
    config = TrainConfig(model=sp.config, optim=OptimConfig(lr=3e-3, weight_decay=0.1),
                         train=RunConfig(dtype="fp32"))
    steps = [TrainStep.for_model(m, config) for m in (sp, mup)]
    assert [len(s.optimizer.param_groups) for s in steps] == [2, 2]
    for lr in (1e-3, 3e-3, 2e-3):
        losses = [step([(x, y)], lr=lr).loss for step in steps]
        assert losses[0] == losses[1]
    for (name, a), b in zip(sp.named_parameters(), mup.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_output_logits_are_multiplied_by_one_over_m():
    model = mup_model(d_model=64, base=16)  # m = 4
    x, _ = batch()
    h = model.hidden_states(x)
    torch.testing.assert_close(model(x), (h @ model.lm_head.weight.T) / 4, rtol=1e-6, atol=1e-6)


def test_output_layer_init_is_the_base_width_one_at_every_width():
    """mup's MuReadout: constant init variance (SP's at the base width), not 1/fan_in."""
    base_std = math.sqrt(2 / (32 + V))
    for d in (32, 256):
        w = mup_model(d_model=d, base=32).lm_head.weight
        assert w.std().item() == pytest.approx(base_std * 0.9866, rel=0.05)  # ±3σ truncation
    sp_wide = TransformerLM(V, T, 256, 2, 4).lm_head.weight
    assert sp_wide.std().item() < 0.75 * base_std  # SP's Glorot init shrinks with width


def hand_attention(q, k, v, scale):
    n = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flash", "sdpa-bf16"])
def test_every_attention_backend_takes_the_scale(backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 12, 32, generator=g) for _ in range(3))
    scale = 1 / 32  # µP's 1/d_head (SP would be 1/√32)
    want = hand_attention(q, k, v, scale)
    if backend == "reference":
        got = scaled_dot_product_attention(q, k, v, torch.ones(12, 12, dtype=torch.bool).tril(),
                                           scale)
    elif backend == "sdpa-bf16":  # the CPU low-precision matmul route
        got = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), "sdpa", scale=scale)
        torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
        return
    else:
        got = causal_attention(q, k, v, backend, scale=scale)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, hand_attention(q, k, v, 1 / math.sqrt(32)), atol=1e-3)


@torch.no_grad()
def test_folding_the_multipliers_into_an_sp_model_gives_the_same_logits():
    """The forward of µP is SP with lm_head·1/m and q_proj·(scale·√d_head): an identity that
    pins both the output multiplier and the attention scale every backend uses."""
    x, _ = batch()
    for backend in ("reference", "sdpa", "flash"):
        mup = mup_model(d_model=64, base=16, attention=backend).eval()
        sp = TransformerLM(V, T, 64, 2, 4, attention=backend).eval()
        sp.load_state_dict(mup.sp_state_dict())
        torch.testing.assert_close(sp(x), mup(x), atol=1e-5, rtol=1e-5)
        sp.load_state_dict(mup.state_dict())  # unfolded: the multipliers do matter
        assert not torch.allclose(sp(x), mup(x), atol=1e-3)


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
@torch.inference_mode()
def test_cached_decoding_of_a_mup_model_equals_the_full_forward(attention):
    model = mup_model(d_model=64, base=16, seed=2, attention=attention).eval()
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache, logits = prefill(model, [ids[0, :6].tolist(), ids[1, :6].tolist()], T)
    torch.testing.assert_close(logits, full[:, 5], atol=1e-5, rtol=1e-5)
    step = DecodeStep(model)  # the packed-weight decode step
    for t in range(6, 10):
        torch.testing.assert_close(step(cache, ids[:, t]), full[:, t], atol=1e-5, rtol=1e-5)
    for t in range(10, T):  # the module path with the cache
        torch.testing.assert_close(model(ids[:, t:t + 1], kv_cache=cache)[:, -1], full[:, t],
                                   atol=1e-5, rtol=1e-5)


def test_first_adam_step_moves_hidden_matrices_by_lr_over_m():
    """Adam's first update is lr · g/(|g| + ε): |Δw| ≈ lr for every weight with |g| ≫ ε, so the
    median |Δw| of each parameter reads off its learning rate."""
    model = mup_model(d_model=64, base=16)  # m = 4; d_ff 192 vs the base's 64: w2 gets 1/3
    x, y = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    o = OptimConfig(lr=1e-2, weight_decay=0.0)
    opt = make_optimizer(decay_groups(model), o, lr_scales=model_lr_scales(model))
    cross_entropy(model(x), y).backward()
    opt.step()
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    want = {"layers.0.attn.q_proj.weight": 1e-2 / 4, "layers.1.ffn.w1.weight": 1e-2 / 4,
            "layers.1.ffn.w2.weight": 1e-2 / 3, "lm_head.weight": 1e-2,
            "ln_final.weight": 1e-2, "layers.0.ln1.weight": 1e-2}
    for name, lr in want.items():
        assert moved[name].median().item() == pytest.approx(lr, rel=0.02), name
    rows = moved["token_embeddings.weight"][x.unique()]  # only the rows the batch used
    assert rows.median().item() == pytest.approx(1e-2, rel=0.02)


def test_groups_keep_lr_times_weight_decay_and_the_schedule_keeps_the_multipliers():
    model = mup_model(d_model=128, base=32)  # m = 4
    config = TrainConfig(model=model.config, optim=OptimConfig(lr=1e-3, weight_decay=0.1),
                         train=RunConfig(dtype="fp32"))
    step = TrainStep.for_model(model, config)
    x, y = batch()
    step([(x, y)], lr=4e-3)
    groups = step.optimizer.param_groups
    # hidden matrices 1/m; w2 1/(d_ff / base d_ff) = 1/(384 / 128); embeddings, lm_head, gains 1
    assert sorted(g.get("lr_scale", 1.0) for g in groups) == pytest.approx([1 / 4, 1 / 3, 1, 1])
    for g in groups:
        assert g["lr"] == pytest.approx(4e-3 * g.get("lr_scale", 1.0))
        if g["weight_decay"]:
            assert g["lr"] * g["weight_decay"] == pytest.approx(4e-3 * 0.1)  # mup.MuAdamW's rule


def test_groups_match_the_mup_package():
    mup = pytest.importorskip("mup", reason="the mup package is an optional reference")
    model, base = mup_model(d_model=128, base=32), mup_model(d_model=32, base=32)
    mup.set_base_shapes(model, base, rescale_params=False)
    decay, no_decay = decay_groups(model)
    theirs = mup.MuAdamW([{"params": decay, "weight_decay": 0.1},
                          {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    ours = make_optimizer((decay, no_decay), OptimConfig(lr=1e-3, weight_decay=0.1),
                          lr_scales=model_lr_scales(model))

    def settings(opt):
        return {id(p): (pytest.approx(g["lr"]), pytest.approx(g["weight_decay"]))
                for g in opt.param_groups for p in g["params"]}

    assert settings(ours) == settings(theirs)


def test_per_layer_rates_need_the_models_own_parameters():
    model = mup_model()
    stranger = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(InvalidArgument, match="fsdp"):
        make_optimizer(decay_groups(model), OptimConfig(), lr_scales={stranger: 0.5})


def test_hf_export_folds_the_multipliers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")
    from lmforge.config import save_config
    from lmforge.infer.hf_io import export_hf
    from lmforge.train.checkpoint import save_run_checkpoint
    from lmforge.train.optim import AdamW

    model = mup_model(d_model=64, base=16).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(model=model.config), run / "config.toml")
    save_run_checkpoint(run, 1, model, AdamW(model.parameters()), {})
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(run, tmp_path / "hf")).eval()
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=1e-4)


def test_the_trainer_keeps_the_per_layer_rates_through_its_schedule(tmp_path):
    import numpy as np

    from lmforge.config import DataConfig
    from lmforge.train import loop

    ids = (np.arange(3000) * 7 % V).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    model = ModelConfig(V, T, 32, 1, 2, parametrization="mup", mup_base_width=16)  # m = 2
    config = TrainConfig(model=model, data=DataConfig(train=str(tmp_path / "train.npy")),
                         optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=2),
                         train=RunConfig(max_steps=3, batch_size=2, threads=1))
    trainer = loop.Trainer(config, tmp_path / "run", resume=False, progress=False)
    try:
        for _ in range(3):
            *_, lr = trainer.train_step()
        scales = {id(p): s for p, s in model_lr_scales(trainer.model).items()}
        assert len(scales) == 7  # q, k, v, o, w1, w2, w3 of the one block
        for group in trainer.optimizer.param_groups:
            want = {scales.get(id(p), 1.0) for p in group["params"]}
            assert want == {group.get("lr_scale", 1.0)}
            assert group["lr"] == pytest.approx(lr * group.get("lr_scale", 1.0))
    finally:
        trainer.metrics.close()
