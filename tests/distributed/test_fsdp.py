"""FSDP on 2 gloo processes equals single-process training, bit for bit in fp32.

One spawned group trains each (model, compute dtype, prefetch) variant for a few AdamW steps,
each rank on its half of every batch, and returns the gathered full state dict, communication
logs and sizes. Rank 1 starts from other weights, so equality also proves the broadcast.

The exact reference (fp32, ``torch.equal``): one process computes the gradient of each rank's
half batch with its own backward — the same kernels on the same shapes as each rank — and sets
``grad = (g_0 + g_1) / 2``, which is what the reduce-scatter / all-reduce produce (for 2 ranks
the sum is one IEEE addition, so its order cannot matter). One backward over the full batch
sums the rows in another order and agrees only to rounding; it is checked with `allclose`, and
is the reference of the bf16 runs. The exact reference runs inside rank 0 so it uses the same
intra-op thread count as the ranks (a different blocking could change the rounding).

Models: a tiny `TransformerLM` with tied embeddings, a frozen sharded weight
(``layers.0.attn.v_proj``) and a frozen replicated one (``ln_final``); `ShardToy` with
``nn.Linear`` biases, ``nn.Embedding``, odd sizes (padding), two ``nn.Linear`` sharing a weight,
a module called twice, a frozen layer, a never-used layer and replicated parameters. The
models of tests/distributed/models.py are not used: their data-dependent branch (a layer run
by one rank only) is outside FSDP's contract, every gather being a collective.
"""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.distributed import run_distributed
from lmforge.distributed.fsdp import FSDP, gather_full_params
from lmforge.model import ModelConfig, TransformerLM
from lmforge.model.layers import Linear, RMSNorm
from lmforge.train.optim import AdamW

WORLD, BATCH, STEPS = 2, 8, 3
LM_CONFIG = ModelConfig(
    vocab_size=32, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=32,
    tie_embeddings=True,
)  # fmt: skip
# name -> (model kind, compute dtype, prefetch)
VARIANTS = {
    "toy": ("toy", None, 1),
    "lm": ("lm", None, 1),
    "lm_prefetch0": ("lm", None, 0),
    "lm_prefetch3": ("lm", None, 3),
    "toy_bf16": ("toy", torch.bfloat16, 1),
    "lm_bf16": ("lm", torch.bfloat16, 1),
}
FROZEN = {"lm": {"layers.0.attn.v_proj.weight", "ln_final.weight"}, "toy": {"frozen.weight"}}
UNUSED = {"lm": set(), "toy": {"unused.weight", "unused.bias"}}


class ShardToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 15)  # 165 elements: padded to 166
        self.inp = nn.Linear(6, 15)  # bias of 15: padded
        self.frozen = Linear(15, 15)
        self.frozen.requires_grad_(False)
        self.mid = nn.Linear(15, 15)
        self.tied = nn.Linear(15, 15)
        self.tied.weight = self.mid.weight  # one weight, two modules, two biases
        self.norm = RMSNorm(15)  # replicated
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, 15))  # replicated, no module
        self.shared = Linear(15, 15)  # called twice per forward
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(15, 6)

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x)) + self.emb(ids)
        h = torch.tanh(self.tied(torch.tanh(self.mid(torch.tanh(self.frozen(h))))))
        h = self.norm(h) * self.gate
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(h)))))


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "toy":
        return ShardToy()
    model = TransformerLM.from_config(LM_CONFIG)
    model.layers[0].attn.v_proj.weight.requires_grad_(False)
    model.ln_final.weight.requires_grad_(False)
    return model


def batches(kind: str) -> list[tuple[Tensor, ...]]:
    g = torch.Generator().manual_seed(1234)
    if kind == "toy":
        return [
            (
                torch.randn(BATCH, 6, generator=g),
                torch.randint(0, 11, (BATCH,), generator=g),
                torch.randn(BATCH, 6, generator=g),
            )
            for _ in range(STEPS)
        ]
    ids = [torch.randint(0, 32, (BATCH, 9), generator=g) for _ in range(STEPS)]
    return [(t[:, :-1], t[:, 1:]) for t in ids]


def loss_fn(kind: str, model: nn.Module, batch: tuple[Tensor, ...], rank: int, parts: int):
    """Mean loss over the rows of part `rank` of `parts` equal parts of `batch`."""
    n = BATCH // parts
    batch = tuple(t[rank * n : (rank + 1) * n] for t in batch)
    if kind == "toy":
        x, ids, y = batch
        return F.mse_loss(model(x, ids).float(), y)
    ids, targets = batch
    return F.cross_entropy(model(ids).float().flatten(0, 1), targets.flatten())


def optimizer(params: list[nn.Parameter], shape_of) -> AdamW:
    """Decay on matrices only: groups chosen by the full shape (shards are flat)."""
    trainable = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if len(shape_of(p)) >= 2]},
        {"params": [p for p in trainable if len(shape_of(p)) < 2], "weight_decay": 0.0},
    ]
    return AdamW(groups, lr=1e-2, weight_decay=0.1)


def reference(kind: str, per_rank_halves: bool) -> dict[str, Tensor]:
    """Single-process training; halves: grad = (g_0 + g_1) / 2 from two backward passes."""
    model = build(kind, seed=100)
    opt = optimizer(list(model.parameters()), lambda p: p.shape)
    for batch in batches(kind):
        opt.zero_grad(set_to_none=True)
        if per_rank_halves:
            for r in range(WORLD):
                loss_fn(kind, model, batch, r, WORLD).backward()  # .grad = g_0, then g_0 + g_1
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(WORLD)
        else:
            loss_fn(kind, model, batch, 0, 1).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


class _CopyOnWait:
    """Work handle of an all-gather run into a scratch buffer, copied out on ``wait()``.

    gloo's worker thread drops its reference to a finished operation's tensors a little after
    ``wait()`` returns; gathering into scratch keeps that lag off the buffer FSDP holds, so
    the buffer's liveness shows exactly what FSDP and autograd keep.
    """

    def __init__(self, work, scratch: Tensor, out: Tensor) -> None:
        self.work, self.scratch, self.out = work, scratch, out

    def wait(self) -> bool:
        self.work.wait()
        self.out.copy_(self.scratch)
        self.work = self.scratch = self.out = None
        return True


class CommLog:
    """Wraps the collectives FSDP calls; records (phase, op, dtype, numel, live gathered).

    live gathered: how many all-gather output buffers exist at that call, the new one included.
    """

    def __init__(self) -> None:
        self.phase, self.rows, self.buffers = "other", [], []
        gather, scatter = dist.all_gather_single, dist.reduce_scatter_single
        reduce = dist.all_reduce

        def all_gather_single(out, inp, async_op=False):
            self.buffers.append(weakref.ref(out))
            self.rows.append((self.phase, "gather", inp.dtype, inp.numel(), self.live()))
            scratch = torch.empty_like(out)
            work = _CopyOnWait(gather(scratch, inp, async_op=True), scratch, out)
            return work if async_op else work.wait()

        def reduce_scatter_single(out, inp, **kw):
            self.rows.append((self.phase, "scatter", inp.dtype, inp.numel(), None))
            return scatter(out, inp, **kw)

        def all_reduce(tensor, **kw):
            self.rows.append((self.phase, "all_reduce", tensor.dtype, tensor.numel(), None))
            return reduce(tensor, **kw)

        dist.all_gather_single = all_gather_single
        dist.reduce_scatter_single = reduce_scatter_single
        dist.all_reduce = all_reduce

    def live(self) -> int:
        return sum(ref() is not None for ref in self.buffers)


def _full_grads(wrapped: FSDP) -> dict[str, Tensor]:
    """All-gather every shard's gradient into the full tensor, keyed by its parameter name."""
    grads = {}
    for key, shard in wrapped.flat_shards.items():
        if shard.grad is not None:
            buf = shard.grad.new_empty(shard.numel() * WORLD)
            dist.all_gather_single(buf, shard.grad)
            shape = wrapped.full_shape(shard)
            grads[key.replace("__", ".")] = buf[: shape.numel()].view(shape)
    for name, p in wrapped.module.named_parameters():
        if p.grad is not None:
            grads[name] = p.grad.clone()
    return grads


def _train(rank: int, kind: str, dtype, prefetch: int, log: CommLog) -> dict:
    wrapped = FSDP(build(kind, seed=100 + rank), compute_dtype=dtype, prefetch=prefetch)
    opt = optimizer(list(wrapped.parameters()), wrapped.full_shape)
    out = {"local_numel": sum(p.numel() for p in wrapped.parameters())}
    for step, batch in enumerate(batches(kind)):
        opt.zero_grad(set_to_none=True)
        log.rows, log.buffers, log.phase = [], [], "forward"
        loss = loss_fn(kind, wrapped, batch, rank, WORLD)
        out["live_after_forward"] = log.live()
        log.phase = "backward"
        loss.backward()
        log.phase = "other"
        wrapped.finish_gradient_synchronization()  # as a DDP loop would: already done, no-op
        out["live_after_backward"] = log.live()
        if step == 0:
            out["grads"] = _full_grads(wrapped)
        opt.step()
    out["log"], log.rows = log.rows, []  # the last step's
    with torch.no_grad():  # the no-autograd path, e.g. evaluation
        out["eval_loss"] = loss_fn(kind, wrapped, batches(kind)[0], rank, WORLD)
    out["attached"] = [n for n, m in wrapped.module.named_modules() if "weight" in vars(m)]
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    out["state_numel"] = sum(v.numel() for v in state)
    out["state_dtypes"] = {v.dtype for v in state}
    out["shard_dtypes"] = {p.dtype for p in wrapped.flat_shards.values()}
    log.rows = []
    out["full"] = {k: v.clone() for k, v in gather_full_params(wrapped).items()}
    out["full_log"] = log.rows
    return out


def _worker(rank: int, world_size: int) -> dict:
    log = CommLog()
    results = {name: _train(rank, *variant, log) for name, variant in VARIANTS.items()}
    if rank == 0:  # same process, same thread count as the ranks
        results["exact_reference"] = {kind: reference(kind, True) for kind in ("toy", "lm")}
    return results


@pytest.fixture(scope="module")
def rank_results() -> list[dict]:
    return run_distributed(_worker, WORLD, timeout_s=60)


def _reference_grads(kind: str) -> dict[str, Tensor]:
    model = build(kind, seed=100)
    loss_fn(kind, model, batches(kind)[0], 0, 1).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


FP32 = [name for name, (_, dtype, _) in VARIANTS.items() if dtype is None]
BF16 = [name for name, (_, dtype, _) in VARIANTS.items() if dtype is not None]


@pytest.mark.parametrize("variant", FP32)
def test_fp32_is_bit_exact_with_the_per_rank_gradient_reference(rank_results, variant):
    kind = VARIANTS[variant][0]
    expected = rank_results[0]["exact_reference"][kind]
    for rank, results in enumerate(rank_results):
        got = results[variant]["full"]
        assert list(got) == list(build(kind, 0).state_dict())  # names and order of state_dict
        for name, value in expected.items():
            assert torch.equal(got[name], value), f"{name} on rank {rank}"


@pytest.mark.parametrize("variant", FP32)
def test_fp32_equals_full_batch_training_to_rounding(rank_results, variant):
    kind = VARIANTS[variant][0]
    expected, initial = reference(kind, False), build(kind, 100).state_dict()
    got = rank_results[1][variant]["full"]
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
        # Frozen and never-used weights keep their values; every other one trained.
        kept = name in FROZEN[kind] | UNUSED[kind]
        assert torch.equal(got[name], initial[name]) == kept, name
    grads = rank_results[1][variant]["grads"]  # after the first backward, full-batch average
    expected_grads = _reference_grads(kind)
    assert grads.keys() == expected_grads.keys()  # frozen and unused: no gradient
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("variant", BF16)
def test_bf16_compute_matches_fp32_training_to_bf16_rounding(rank_results, variant):
    kind = VARIANTS[variant][0]
    results = rank_results[0][variant]
    grads, expected_grads = results["grads"], _reference_grads(kind)
    assert grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():  # a wrong scale (sum, not mean) would be 100 %
        assert (grads[name].float() - g).norm() <= 0.06 * g.norm(), name
    got, expected = results["full"], reference(kind, False)
    initial = build(kind, 100).state_dict()
    distance = sum((got[k].float() - v).square().sum() for k, v in expected.items()).sqrt()
    moved = sum((initial[k] - v).square().sum() for k, v in expected.items()).sqrt()
    assert distance < 0.25 * moved  # measured: ~0.08
    assert all(torch.equal(got[k], rank_results[1][variant]["full"][k]) for k in got)


@pytest.mark.parametrize("variant", BF16)
def test_bf16_communicates_in_bf16_and_keeps_fp32_masters(rank_results, variant):
    results = rank_results[0][variant]
    dtypes = lambda op: {row[2] for row in results["log"] if row[1] == op}  # noqa: E731
    assert dtypes("gather") == dtypes("scatter") == {torch.bfloat16}
    assert dtypes("all_reduce") == {torch.float32}  # replicated parameters keep their dtype
    assert {row[2] for row in results["full_log"]} == {torch.float32}  # gather_full_params
    assert results["shard_dtypes"] == results["state_dtypes"] == {torch.float32}
    assert all(v.dtype == torch.float32 for v in results["full"].values())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_rank_stores_half_of_the_sharded_parameters(rank_results, variant):
    kind = VARIANTS[variant][0]
    model = build(kind, 0)
    units = (nn.Linear, nn.Embedding, Linear)
    sharded = {id(p) for m in model.modules() if isinstance(m, units) for p in m.parameters()}
    half = lambda p: -(-p.numel() // WORLD) if id(p) in sharded else p.numel()  # noqa: E731
    params = dict(model.named_parameters())
    full = sum(p.numel() for p in params.values() if id(p) in sharded)
    local = sum(half(p) for p in params.values())
    assert local - sum(p.numel() for p in params.values() if id(p) not in sharded) < 0.51 * full
    # AdamW keeps two moments for each trained local element (never-used ones get no state).
    trained = sum(half(p) for n, p in params.items() if p.requires_grad and n not in UNUSED[kind])
    for results in rank_results:
        assert results[variant]["local_numel"] == local
        assert results[variant]["state_numel"] == 2 * trained


# Per training step, hand-counted. LM: 16 Linear/Embedding calls (embedding, 7 per layer x 2,
# lm_head); the backward re-gathers the 15 whose weight a matmul saved (not the lookup: an
# index saves no weight; the frozen v_proj is re-gathered for its input gradient); 14
# reduce-scatters (the tied weight once, the frozen v_proj never). Toy: 12 gathers (emb; inp,
# mid, tied, head: weight + bias; frozen; shared twice); re-gathered: frozen, mid, tied, shared
# twice, head (inp's input needs no gradient, so its weight is not saved); 9 reductions (the
# tied weight and the twice-called `shared` once each, `frozen` never). All-reduces of
# replicated gradients: LM ln1 and ln2 of 2 layers (ln_final is frozen); toy norm and gate.
COUNTS = {"lm": (16, 15, 14, 4), "toy": (12, 6, 9, 2)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gathers_per_use_and_again_in_backward(rank_results, variant):
    kind = VARIANTS[variant][0]
    log = rank_results[0][variant]["log"]
    count = lambda phase, op: sum(r[0] == phase and r[1] == op for r in log)  # noqa: E731
    assert (
        count("forward", "gather"),
        count("backward", "gather"),
        count("backward", "scatter"),
        count("backward", "all_reduce"),
    ) == COUNTS[kind]
    assert len(log) == sum(COUNTS[kind])  # nothing else: no communication outside the step


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_weights_are_freed_and_prefetch_is_bounded(rank_results, variant):
    kind, _, prefetch = VARIANTS[variant]
    results = rank_results[0][variant]
    per_module = 2 if kind == "toy" else 1  # nn.Linear: weight and bias
    live = lambda phase: max(r[4] for r in results["log"] if r[:2] == (phase, "gather"))  # noqa: E731
    assert live("forward") == per_module + prefetch  # the current module's + the prefetched
    assert live("backward") == 1 + prefetch  # only weights are saved for the backward
    assert results["live_after_forward"] == results["live_after_backward"] == 0
    assert results["attached"] == []  # no module keeps a gathered weight


@pytest.mark.parametrize("kind", ["toy", "lm"])
def test_gather_full_params_loads_into_the_unwrapped_model(rank_results, kind):
    full = rank_results[0][kind]["full"]
    model = build(kind, 0)
    model.load_state_dict(full)  # strict: same names, same shapes
    if kind == "lm":
        assert model.lm_head.weight is model.token_embeddings.weight
        assert torch.equal(full["lm_head.weight"], full["token_embeddings.weight"])
    with torch.no_grad():  # the trained weights, unwrapped, give the ranks' evaluation loss
        for rank, results in enumerate(rank_results):
            expected = loss_fn(kind, model, batches(kind)[0], rank, WORLD)
            torch.testing.assert_close(results[kind]["eval_loss"], expected, rtol=1e-6, atol=0)
    assert {row[1:3] for row in rank_results[0][kind]["full_log"]} == {("gather", torch.float32)}


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="process group"):
        FSDP(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="prefetch"):
        FSDP(nn.Linear(2, 2), prefetch=-1)
    with pytest.raises(ValueError, match="floating"):
        FSDP(nn.Linear(2, 2), compute_dtype=torch.int32)
    with pytest.raises(ValueError, match="FSDP-wrapped"):
        gather_full_params(nn.Linear(2, 2))
