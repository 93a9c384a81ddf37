"""`TrainStep`, the one training step: equal to PyTorch's own AdamW + clipping, accumulation
equal to one big batch, non-finite steps refused without an update."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import OptimConfig, RunConfig, TrainConfig
from lmforge.model import ModelConfig, TransformerLM
from lmforge.train.step import NonFiniteStep, TrainStep

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2)


def _setup(grad_clip=0.5, seed=0):
    torch.manual_seed(seed)
    model = TransformerLM.from_config(CONFIG)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (4, 16), generator=g)
    y = torch.randint(0, 64, (4, 16), generator=g)
    config = TrainConfig(model=CONFIG, optim=OptimConfig(lr=3e-3, grad_clip=grad_clip,
                                                         weight_decay=0.1),
                         train=RunConfig(dtype="fp32"))
    return model, x, y, config


def _reference_step(model, x, y, o: OptimConfig, lr: float):
    """PyTorch's AdamW and clip_grad_norm_ on torch's cross-entropy: an independent step."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(o.beta1, o.beta2), eps=o.eps)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
    opt.step()
    return loss.item(), float(norm)


@pytest.mark.parametrize("grad_clip", [0.5, 100.0])
def test_one_step_equals_pytorch_adamw_with_clipping(grad_clip):
    model, x, y, config = _setup(grad_clip)
    reference = copy.deepcopy(model)
    stats = TrainStep.for_model(model, config)([(x, y)], lr=2e-3)
    ref_loss, ref_norm = _reference_step(reference, x, y, config.optim, lr=2e-3)
    assert stats.loss == pytest.approx(ref_loss, rel=1e-5)
    assert stats.grad_norm == pytest.approx(ref_norm, rel=1e-4)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_accumulated_micro_batches_equal_one_batch():
    model, x, y, config = _setup(grad_clip=0.0)
    twin = copy.deepcopy(model)
    whole = TrainStep.for_model(model, config)([(x, y)], lr=1e-3)
    halves = TrainStep.for_model(twin, config)([(x[:2], y[:2]), (x[2:], y[2:])], lr=1e-3)
    assert halves.loss == pytest.approx(whole.loss, rel=1e-5)
    assert halves.grad_norm == pytest.approx(whole.grad_norm, rel=1e-4)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_a_non_finite_step_is_refused_without_an_update():
    model, x, y, config = _setup()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteStep) as err:
        TrainStep.for_model(model, config)([(x, y)], lr=1e-3)
    assert err.value.loss != err.value.loss  # NaN
    for p, b in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p, b, equal_nan=True)
        assert p.grad is None


def test_bf16_step_runs_under_autocast():
    model, x, y, config = _setup()
    config.train.dtype = "bf16"
    step = TrainStep.for_model(model, config)
    seen = []
    step.loss_fn = lambda ab: (seen.append(torch.is_autocast_enabled("cpu")),
                               F.cross_entropy(model(ab[0]).flatten(0, 1).float(),
                                               ab[1].flatten()))[1]
    step([(x, y)])
    assert seen == [True]
