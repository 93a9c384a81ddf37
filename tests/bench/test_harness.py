"""`lmforge.bench.harness` and `sizes`: timing arithmetic, the same batch and weights for every
dtype, MFU, peak memory, argument errors."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

from lmforge.bench import SIZES, bench_model, compare_dtypes, size_config
from lmforge.bench.harness import PeakMemory, build, make_step
from lmforge.model import ModelConfig, TransformerLM, count_parameters, flops_per_token

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2)
FAST = dict(batch_size=2, warmup=1, steps=2, peak=1e12)


def test_timing_fields_follow_from_the_step_times():
    r = bench_model(CONFIG, "forward-backward", **FAST)
    assert len(r.times_s) == 2 and r.mean_s == pytest.approx(statistics.fmean(r.times_s))
    assert r.std_s == pytest.approx(statistics.stdev(r.times_s))
    assert r.tokens_per_s == pytest.approx(2 * 16 / r.mean_s)
    assert r.flops_per_token == flops_per_token(CONFIG, training=True)
    assert r.mfu == pytest.approx(r.tokens_per_s * r.flops_per_token / 1e12)
    assert r.parameters == count_parameters(CONFIG)
    assert (r.peak_flops, r.peak_flops_source) == (1e12, "given")


def test_loss_is_the_first_step_on_the_seeded_model_and_batch():
    """Independent recomputation with torch's cross-entropy on the documented seeds."""
    torch.manual_seed(0)
    model = TransformerLM.from_config(CONFIG)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (2, 16), generator=g)
    y = torch.randint(0, 64, (2, 16), generator=g)
    expected = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    for mode in ("forward", "train-step"):
        assert bench_model(CONFIG, mode, **FAST).loss == pytest.approx(expected, rel=1e-5)


def test_bf16_comparison_same_batch_small_loss_difference():
    c = compare_dtypes(CONFIG, mode="forward", **FAST)
    assert (c.fp32.dtype, c.bf16.dtype) == ("fp32", "bf16")
    assert c.speedup == pytest.approx(c.fp32.mean_s / c.bf16.mean_s)
    assert c.loss_diff == c.bf16.loss - c.fp32.loss
    assert 0 < abs(c.loss_diff) < 0.05  # autocast really ran in bf16, and stays close


def test_modes_do_what_they_say():
    dev = torch.device("cpu")
    for mode in ("forward", "forward-backward", "train-step"):
        model, x, y = build(CONFIG, 2, dev)
        before = [p.detach().clone() for p in model.parameters()]
        make_step(model, mode, x, y, "fp32", dev)()
        has_grads = all(p.grad is not None for p in model.parameters())
        after = list(model.parameters())
        changed = any(not torch.equal(a, p) for a, p in zip(before, after, strict=True))
        # train-step is the trainer's step: it applies the update and clears the gradients.
        assert has_grads == (mode == "forward-backward")
        assert changed == (mode == "train-step")


def test_overrides_reach_the_model():
    r = bench_model(CONFIG, "forward-backward", context_length=8, attention="sdpa",
                    checkpoint_activations=True, **FAST)
    assert (r.context_length, r.attention, r.checkpoint_activations) == (8, "sdpa", True)
    plain = bench_model(CONFIG, "forward-backward", context_length=8, attention="sdpa", **FAST)
    assert r.loss == pytest.approx(plain.loss, rel=1e-6)


def test_cpu_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(2**24)  # 64 MiB, touched
        del x
    if mem.bytes is None:
        pytest.skip(mem.method)
    assert mem.bytes >= 0.9 * 2**26
    assert mem.method.startswith("cpu peak RSS")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "inference"}, "unknown mode"), ({"dtype": "fp16"}, "unknown dtype"),
     ({"steps": 0}, "steps >= 1"), ({"batch_size": 0}, "batch_size >= 1")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench_model(CONFIG, **{**FAST, **kwargs})


def test_sizes_match_built_models():
    assert size_config("small") == ModelConfig(10_000, 256, 768, 12, 12, 3072)
    c = size_config("tiny", vocab_size=100, context_length=32)
    assert TransformerLM.from_config(c).num_parameters() == count_parameters(c)
    assert set(SIZES) >= {"tiny", "cpu-small", "small", "medium", "large", "xl", "2.7B"}
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        size_config("huge")
