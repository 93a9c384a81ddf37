"""AdamW vs torch.optim.AdamW, the cosine schedule at known values, clipping vs clip_grad_norm_."""

from __future__ import annotations

import io
import math

import pytest
import torch

from lmforge.train import AdamW, get_lr_cosine_schedule, gradient_clipping

# CS336's reference values for max_lr=1, min_lr=0.1, warmup 7, cycle 21, iterations 0..24:
# it/7 during warm-up, 0.1 + 0.45 (1 + cos(π (it-7)/14)) up to 21 (0.55 at the midpoint 14).
CS336_SCHEDULE = [
    0.0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714,
    0.7142857142857143, 0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885,
    0.9018241671106134, 0.8305704108364301, 0.7452476826029011, 0.6501344202803414, 0.55,
    0.44986557971965857, 0.3547523173970989, 0.26942958916356996, 0.19817583288938662,
    0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1,
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool stalls on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (16,), (4, 16), (4,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.5) for s in shapes]


def _loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    h = torch.tanh(x @ w1.T + b1)
    return ((h @ w2.T + b2 - y) ** 2).mean()


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """Matrices with decay at the default lr, vectors (biases) in a no-decay group at 2x lr."""
    return [
        {"params": [params[0], params[2]], "lr_scale": 1.0},
        {"params": [params[1], params[3]], "weight_decay": 0.0, "lr_scale": 2.0},
    ]


def _train(opt: torch.optim.Optimizer, params, steps: int, start: int = 0) -> None:
    g = torch.Generator().manual_seed(123)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
    for it in range(start, start + steps):
        lr = get_lr_cosine_schedule(it, 3e-2, 3e-3, 50, 800)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        opt.zero_grad()
        _loss(params, x, y).backward()
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_adamw_over_1000_steps_with_groups_decay_and_schedule(foreach):
    ours_p, ref_p = _mlp_params(), _mlp_params()
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    ours = AdamW(_groups(ours_p), foreach=foreach, **kw)
    ref = torch.optim.AdamW(_groups(ref_p), foreach=False, **kw)
    _train(ours, ours_p, 1000)
    _train(ref, ref_p, 1000)
    for a, b, init in zip(ours_p, ref_p, _mlp_params(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert (a - init).abs().max() > 1e-2  # training really moved the weights


def test_foreach_path_equals_reference_path():
    a_p, b_p = _mlp_params(1), _mlp_params(1)
    a, b = AdamW(_groups(a_p)), AdamW(_groups(b_p), foreach=True)
    _train(a, a_p, 200)
    _train(b, b_p, 200)
    for pa, pb in zip(a_p, b_p, strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7)


def test_state_dict_round_trip_mid_run_continues_identically():
    full_p, half_p = _mlp_params(2), _mlp_params(2)
    full = AdamW(_groups(full_p), weight_decay=0.05)
    _train(full, full_p, 100)

    first = AdamW(_groups(half_p), weight_decay=0.05)
    _train(first, half_p, 50)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = AdamW(_groups(half_p), weight_decay=0.05)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.state[half_p[0]]["step"] == 50
    _train(resumed, half_p, 50, start=50)
    for a, b in zip(full_p, half_p, strict=True):
        assert torch.equal(a, b)


def test_params_without_grad_are_left_alone_like_torch():
    ours_p, ref_p = _mlp_params(3), _mlp_params(3)
    ours, ref = AdamW(ours_p), torch.optim.AdamW(ref_p)
    for params, opt in ((ours_p, ours), (ref_p, ref)):
        params[0].grad = torch.ones_like(params[0])
        opt.step()
    assert len(ours.state) == 1 and torch.equal(ours_p[1], _mlp_params(3)[1])
    torch.testing.assert_close(ours_p[0], ref_p[0])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lr": -1.0}, "lr must be >= 0"),
        ({"betas": (1.0, 0.9)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"eps": -1e-8}, "eps must be >= 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        AdamW(_mlp_params(), **kw)
    with pytest.raises(ValueError, match=match):  # also when only one group sets it
        AdamW([{"params": _mlp_params(), **kw}])


def test_cosine_schedule_matches_cs336_values():
    got = [get_lr_cosine_schedule(it, 1.0, 0.1, 7, 21) for it in range(25)]
    assert got == pytest.approx(CS336_SCHEDULE, rel=1e-12, abs=1e-12)


def test_cosine_schedule_edge_cases():
    assert get_lr_cosine_schedule(0, 1.0, 0.1, 0, 10) == 1.0  # no warm-up: start at max
    assert get_lr_cosine_schedule(10, 1.0, 0.1, 0, 10) == pytest.approx(0.1)
    assert get_lr_cosine_schedule(5, 1.0, 0.1, 5, 5) == 1.0  # empty cosine phase
    assert get_lr_cosine_schedule(6, 1.0, 0.1, 5, 5) == 0.1
    with pytest.raises(ValueError, match="warmup_iters <= cosine_cycle_iters"):
        get_lr_cosine_schedule(0, 1.0, 0.1, 10, 5)


def _grads(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(5, 3), (7,), (2, 2, 2), (4,)]]
    for p in params[:3]:  # the last parameter has no gradient
        p.grad = torch.randn(p.shape, generator=g)
    return params


@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipped, and left unchanged
def test_clipping_matches_clip_grad_norm(max_norm):
    ours, ref = _grads(4), _grads(4)
    norm = gradient_clipping(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert isinstance(norm, float)
    assert norm == pytest.approx(ref_norm.item(), rel=1e-6)
    assert ours[3].grad is None
    for a, b in zip(ours[:3], ref[:3], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    clipped = math.sqrt(sum(p.grad.square().sum().item() for p in ours[:3]))
    assert clipped == pytest.approx(min(max_norm, ref_norm.item()), rel=1e-5)


def test_clipping_edge_cases():
    assert gradient_clipping([torch.nn.Parameter(torch.ones(3))], 1.0) == 0.0  # no grads at all
    with pytest.raises(ValueError, match="max_l2_norm must be > 0"):
        gradient_clipping(_grads(5), 0.0)
