"""What a run trains on: the Objective the one trainer (`lmforge.train.loop.Trainer`) steps.

The trainer owns the mechanism — optimizer step, gradient accumulation, clipping, autocast,
metrics, checkpoints and exact resume (`lmforge.train.step.TrainStep`). An Objective owns what
differs between pre-training, SFT, DPO and GRPO: where a step's micro-batches come from and what
loss they give.

    for step in range(max_steps):
        batches = objective.next_batches(step, grad_accum_steps)  # GRPO: rollouts first
        TrainStep(batches)                 # per micro-batch: loss = objective.loss(net, batch)
        tokens += Σ objective.batch_tokens(batch)
        train record ← {train_loss, lr, grad_norm, ...} | objective.step_metrics()
        eval pass    ← objective.evaluate(model)            (every eval_interval, at the end)
        checkpoint   ← objective.state_dict()               (data position, RNG, buffers)

`PretrainObjective` is next-token prediction on random windows of a token file (`BatchSampler`),
with cross-entropy or distillation from a teacher: the trainer's objective when none is given.
Its checkpoint state is the sampler's, stored as before under ``"sampler"`` in `state.json`.
Other objectives' states go there too, through `encode_state` (tensors and arrays become
base64 `torch.save` bytes inside the JSON), with ``"objective"`` naming who wrote it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.config import ConfigError, TrainConfig
from lmforge.eval.perplexity import evaluate_loss
from lmforge.train import parallel
from lmforge.train.data import BatchSampler, open_tokens
from lmforge.train.loss import cross_entropy, distillation_loss
from lmforge.train.run_dir import check_token_file, load_run

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer


@runtime_checkable
class Objective(Protocol):
    """A training objective: micro-batches, their loss, metrics and resumable state."""

    name: str  # "pretrain" | "sft" | "dpo" | "grpo" (recorded in each checkpoint)

    def next_batches(self, step: int, n: int) -> list[Any]:
        """The `n` micro-batches of optimizer step `step` (0-based; GRPO may run rollouts)."""
        ...

    def loss(self, net: nn.Module, batch: Any) -> Tensor:
        """Scalar loss of one micro-batch to minimise; runs under the trainer's autocast."""
        ...

    def batch_tokens(self, batch: Any) -> int:
        """Tokens trained on in `batch` (the run's "tokens" counter)."""
        ...

    def step_metrics(self) -> dict[str, float]:
        """Extra scalars for the next train record (reward, accuracy, ...); reset on read."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics at an eval pass (e.g. {"val_loss": 2.1}); {} when there are none."""
        ...

    def state_dict(self) -> dict:
        """Everything the next batches depend on (data position, RNG states, buffers)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s result, so the next batches equal an uninterrupted run's."""
        ...


# Builds an objective on the trainer's model (holding the initial weights: `train.init_from`'s
# or a fresh init), the base's tokenizer (None without one) and the training device.
ObjectiveFactory = Callable[[nn.Module, "Tokenizer | None", torch.device], Objective]


class PretrainObjective:
    """Next-token prediction on random windows of a token file (the trainer's default).

    `sampler` draws (x, y) windows, each (batch, seq) token ids; the loss is `cross_entropy`
    of `net(x)` (nats/token), or with a `teacher` `distill_weight`·distillation at
    `temperature` + (1 - `distill_weight`)·cross-entropy. `evaluate` is the validation loss
    over `val_tokens` (none: {}), sharded over the ranks under data parallelism (`ctx`).
    """

    name = "pretrain"

    def __init__(self, sampler: BatchSampler, *, teacher: nn.Module | None = None,
                 distill_weight: float = 1.0, temperature: float = 1.0,
                 val_tokens: np.ndarray | None = None, eval_batch_size: int = 16,
                 eval_tokens: int | None = None, ctx: parallel.ParallelContext | None = None):
        self.sampler, self.teacher = sampler, teacher
        self.distill_weight, self.temperature = distill_weight, temperature
        self.val_tokens, self.eval_batch_size, self.eval_tokens = val_tokens, eval_batch_size, \
            eval_tokens
        self.ctx, self.device = ctx, torch.device(sampler.device)
        self.context_length = sampler.context_length

    @classmethod
    def from_config(cls, config: TrainConfig, device: torch.device,
                    ctx: parallel.ParallelContext) -> PretrainObjective:
        """`data.train` / `data.val` opened and checked against the model's vocabulary, a
        sampler seeded `train.seed + rank`, and `train.teacher` loaded when set."""
        t, d = config.train, config.data
        train_tokens = open_tokens(d.train)
        check_token_file(d.train, train_tokens, config.model.vocab_size)
        val_tokens = open_tokens(d.val) if d.val else None
        if val_tokens is not None:
            check_token_file(d.val, val_tokens, config.model.vocab_size)
        sampler = BatchSampler(train_tokens, t.batch_size, config.model.context_length, device,
                               t.seed + ctx.rank)
        teacher = load_teacher(t.teacher, config, device) if t.teacher else None
        return cls(sampler, teacher=teacher, distill_weight=t.distill_weight,
                   temperature=t.distill_temperature, val_tokens=val_tokens,
                   eval_batch_size=t.eval_batch_size, eval_tokens=t.eval_tokens or None, ctx=ctx)

    def restart_stream(self, seed: int | list[int]) -> None:
        """A fresh sampler seeded `seed` (resuming on another number of ranks)."""
        s = self.sampler
        self.sampler = BatchSampler(s.tokens, s.batch_size, s.context_length, s.device, seed)

    def next_batches(self, step: int, n: int) -> list[tuple[Tensor, Tensor]]:
        return [self.sampler.next() for _ in range(n)]

    def loss(self, net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = net(x)
        if self.teacher is None:
            return cross_entropy(logits, y)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        soft = distillation_loss(logits, teacher_logits, temperature=self.temperature)
        if self.distill_weight == 1:
            return soft
        w = self.distill_weight
        return w * soft + (1 - w) * cross_entropy(logits, y)

    def batch_tokens(self, batch: tuple[Tensor, Tensor]) -> int:
        return batch[0].numel()

    def step_metrics(self) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"val_loss": nats/token} over the validation split (`model`: FSDP's wrapped net)."""
        if self.val_tokens is None:
            return {}
        if self.ctx is not None and self.ctx.distributed:
            loss = parallel.sharded_eval_loss(
                model, self.val_tokens, self.ctx, context_length=self.context_length,
                batch_size=self.eval_batch_size, max_tokens=self.eval_tokens, device=self.device)
        else:
            loss = evaluate_loss(model, self.val_tokens, batch_size=self.eval_batch_size,
                                 device=self.device, max_tokens=self.eval_tokens).loss
        return {"val_loss": loss}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def load_teacher(run_dir: str, config: TrainConfig, device: torch.device) -> nn.Module:
    """The frozen teacher of a distillation run; it must cover the student's vocab and context."""
    teacher, _, teacher_config = load_run(run_dir, str(device))
    tm, sm = teacher_config.model, config.model
    if tm.vocab_size != sm.vocab_size or tm.context_length < sm.context_length:
        raise ConfigError(
            f"teacher {run_dir} has vocab_size={tm.vocab_size}, context_length={tm.context_length}"
            f"; the student needs the same vocab_size ({sm.vocab_size}) and a context of at least "
            f"{sm.context_length}: train the student on the teacher's tokenizer and data"
        )
    return teacher.requires_grad_(False)


_TENSOR, _ARRAY, _TUPLE = "__torch__", "__numpy__", "__tuple__"


def encode_state(value: Any) -> Any:
    """`value` (an objective's state) as JSON-serialisable data: tensors and numpy arrays become
    ``{"__torch__": base64}`` / ``{"__numpy__": base64}`` of their `torch.save` / `np.save`
    bytes, tuples ``{"__tuple__": [...]}``; `decode_state` inverts it exactly.

    >>> decode_state(encode_state({"pos": 3, "rng": torch.tensor([1, 2])}))["rng"].tolist()
    [1, 2]
    """
    if isinstance(value, Tensor):
        buf = io.BytesIO()
        torch.save(value.detach().cpu(), buf)
        return {_TENSOR: base64.b64encode(buf.getvalue()).decode("ascii")}
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return {_ARRAY: base64.b64encode(buf.getvalue()).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"objective state keys must be strings, got {list(value)[:5]}")
        return {k: encode_state(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [encode_state(v) for v in value]}
    if isinstance(value, list):
        return [encode_state(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"objective state holds a {type(value).__name__}, which a checkpoint cannot "
                    "store; use tensors, arrays, numbers, strings, lists, tuples and dicts")


def decode_state(value: Any) -> Any:
    """The inverse of `encode_state`."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            data = io.BytesIO(base64.b64decode(value[_TENSOR]))
            return torch.load(data, map_location="cpu", weights_only=True)
        if set(value) == {_ARRAY}:
            return np.load(io.BytesIO(base64.b64decode(value[_ARRAY])), allow_pickle=False)
        if set(value) == {_TUPLE}:
            return tuple(decode_state(v) for v in value[_TUPLE])
        return {k: decode_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    return value
