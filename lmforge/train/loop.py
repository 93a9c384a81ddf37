"""The training loop: config in, run directory out, exactly resumable.

Each step is the one training step, `lmforge.train.step.TrainStep`: `grad_accum_steps`
micro-batches of the run's Objective (`lmforge.train.objective`: pre-training's random windows
and cross-entropy by default; SFT, DPO, GRPO from `lmforge.align`), each a forward under
optional bf16 autocast and a backward, then global-norm clipping and our AdamW at the cosine
schedule's learning rate. How many steps there are, and when the run validates and checkpoints,
is a `StepPlan` (`lmforge.train.plan`): fixed by `train.max_steps`, or re-planned after every
step to fit `train.time_budget_s` of wall time. Everything the next step depends on — weights,
AdamW moments, the step counter, the objective's state (pre-training: the sampler's PCG64
state), every RNG and the partially averaged log interval — is in each checkpoint, so
`train(..., resume=True)` continues bit for bit: the resumed `metrics.jsonl` has the same
losses as an uninterrupted run's. `train.init_from` starts from another model's weights
(`lmforge.train.init_from`); counters, optimizer and schedule start fresh.

Benchmark tasks (`[eval]`, `lmforge.train.task_eval`) run every `eval.interval` steps (or with
each validation pass) and at the end, in eval mode and without touching any RNG stream, so they
change nothing in training; their scores are records of `metrics.jsonl` like the losses. Every
record also goes to the sinks of `[logging]` (TensorBoard, W&B) through the one `MetricsLogger`.

Run directory layout:
    config.toml        the resolved config        run.json      versions, device, sizes
    metrics.jsonl      one record per log/eval     plots/loss.png, plots/eval.png
    checkpoints/step_XXXXXXX/   weights (safetensors), optimizer, RNG, state.json
    tokenizer/         copy of the tokenizer (when data.tokenizer is set)

Stopping: Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and returns
(a second Ctrl-C aborts at once). A non-finite loss or gradient stops the run with
`TrainingDiverged` before the bad update is applied; earlier checkpoints are kept.

Data parallelism (`train.parallel = "ddp" | "zero1" | "fsdp"`, under torchrun) keeps this loop
and delegates the differences to `lmforge.train.parallel`: the wrapped module `self.net` runs
the forward, gradients are averaged across ranks before clipping, rank 0 alone writes, and
checkpoints hold every rank's part.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmforge.config import TrainConfig
from lmforge.device import autocast, resolve_dtype, select_device
from lmforge.errors import LmforgeError, PathNotFound
from lmforge.model import TransformerLM
from lmforge.train import parallel
from lmforge.train.allocator import keep_large_allocations
from lmforge.train.checkpoint import (
    CheckpointError,
    checkpoint_to_resume,
    latest_checkpoint,
    load_model_weights,
    newest_intact_checkpoint,
)
from lmforge.train.init_from import load_initial_weights
from lmforge.train.loss import perplexity
from lmforge.train.metrics import (
    MetricsLogger,
    plot_eval,
    plot_losses,
    read_metrics,
    require_sinks,
    truncate_after,
)
from lmforge.train.objective import (
    Objective,
    ObjectiveFactory,
    PretrainObjective,
    decode_state,
    encode_state,
)
from lmforge.train.optim import get_lr_cosine_schedule
from lmforge.train.plan import BudgetPlanner, StepPlan
from lmforge.train.run_dir import check_training_memory, prepare_run_dir, update_run_config
from lmforge.train.step import NonFiniteStep, TrainStep, make_optimizer, model_lr_scales
from lmforge.train.stop import StopRequest
from lmforge.train.task_eval import TaskEvaluator


class TrainingDiverged(LmforgeError, RuntimeError):
    """The loss or gradient norm became NaN/inf; the message says where and what to try."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    tokens: int  # training tokens seen
    train_loss: float | None  # mean train loss of the last log interval
    val_loss: float | None  # last validation loss (nats/token)
    wall_time: float  # seconds of training, across resumes
    interrupted: bool  # stopped early by Ctrl-C / SIGTERM (a checkpoint was written)
    planned_steps: int = 0  # the plan's last step (train.max_steps, or re-planned to a budget)


class Trainer:
    """Holds the model, optimizer, objective and counters of one run; `run()` trains.

    `objective`: None trains the pre-training objective of `config` (`PretrainObjective`); an
    `Objective`; or an `ObjectiveFactory` called with the trainer's model (holding its initial
    weights: `train.init_from`'s or a fresh init), the base's tokenizer and the device. An
    objective that uses the trained model outside `loss`/`evaluate` (GRPO's rollouts) must be
    given as a factory, so it holds the model this trainer updates.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, *, resume: bool, progress: bool,
                 objective: Objective | ObjectiveFactory | None = None):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        t = config.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.ctx, self.device = parallel.setup_parallel(
            t.parallel, select_device(t.device), t.dist_timeout_s
        )
        # In place, as objectives' factories adjust `config` too: the run records the choice (so
        # a resume elsewhere keeps it) and everything after this line sees "fp32" or "bf16".
        t.dtype = resolve_dtype(t.dtype, self.device)
        if self.device.type == "cpu":
            keep_large_allocations()
        if objective is None:  # its token files are checked before anything is allocated
            objective = PretrainObjective.from_config(config, self.device, self.ctx)
        check_training_memory(config, self.device, self.ctx.world_size)
        require_sinks(config.logging)
        self.tasks = TaskEvaluator.from_config(config)  # a bad spec stops the run here
        torch.manual_seed(t.seed)
        self.model = TransformerLM.from_config(config.model, device=self.device)
        pretrain = isinstance(objective, PretrainObjective)
        tokenizer = None  # the base's, copied into a new run
        if t.init_from and not (resume and pretrain):  # a factory sees the initial weights
            tokenizer = load_initial_weights(t.init_from, self.model)
        if not isinstance(objective, Objective):
            objective = objective(self.model, tokenizer, self.device)
        self.objective: Objective = objective
        ckpt = self._checkpoint_to_resume() if resume else None
        if ckpt is not None:  # before wrapping: DDP broadcasts these weights, FSDP shards them
            load_model_weights(ckpt, self.model)
        self.net = parallel.wrap_model(self.model, self.ctx, t.bucket_size_mb)
        # Compiling the loss with the model lets inductor fuse the float32 log-softmax into the
        # output layer (measured: ~65 ms less per step than compiling the model alone).
        loss_fn = torch.compile(self._loss) if t.compile else self._loss
        self.optimizer = _make_optimizer(self.net, config, self.ctx, model_lr_scales(self.model))
        sync = parallel.RankGradients(self.net, self.ctx) if self.ctx.distributed else None
        self.step_fn = TrainStep(self.net, self.optimizer, loss_fn, device=self.device,
                                 dtype=t.dtype, grad_clip=config.optim.grad_clip, sync=sync)
        self.evaluates = not pretrain or getattr(objective, "val_tokens", None) is not None
        self.step, self.tokens, self.wall_offset = 0, 0, 0.0
        self._t0 = time.perf_counter()  # reset by run(); wall_time() counts from here
        self.interval_losses: list[float] = []
        self.val_loss: float | None = None
        self.plan = StepPlan.from_config(config)
        self.planner = self._make_planner() if t.time_budget_s else None
        if ckpt is not None:
            self._restore(ckpt)
            parallel.run_on_main(lambda: update_run_config(self.run_dir, config), self.ctx)
        else:
            parallel.run_on_main(lambda: prepare_run_dir(
                self.run_dir, config, self.model, self.device, tokenizer=tokenizer), self.ctx)
        loggers: list[MetricsLogger] = []  # rank 0's; the other ranks log nothing
        parallel.run_on_main(lambda: loggers.append(MetricsLogger.for_run(
            self.run_dir, config.logging, resume_step=self.step if ckpt else None,
            run_config=config.to_dict())), self.ctx)
        self.metrics = loggers[0] if loggers else parallel.metrics_logger(
            self.run_dir / "metrics.jsonl", self.ctx)

    def _make_planner(self) -> BudgetPlanner:
        """A budget planner pricing validation, task evaluations and checkpoints from this run's
        sizes."""
        t, T = self.config.train, self.config.model.context_length
        val = getattr(self.objective, "val_tokens", None)  # pre-training's validation split
        val_tokens = len(val) if val is not None else 0
        windows = max(1, min(val_tokens, t.eval_tokens or val_tokens) // T)
        per_step = t.batch_size * t.grad_accum_steps
        # A validation window is a forward pass: about a third of a training window's cost.
        params = sum(p.numel() for p in self.model.parameters())
        # Weights + two AdamW moments (fp32) at a conservative ~200 MB/s.
        tasks = self.tasks
        # Ranks plan alike: from the rank-mean time of one timed example per task.
        task_s = parallel.mean_over_ranks(tasks.estimate_seconds(self.model, self._autocast),
                                          self.ctx) if tasks else 0.0
        return BudgetPlanner(self.config, lambda step_s: step_s * windows / (3 * per_step),
                             estimate_checkpoint_s=params * 12 / 200e6,
                             estimate_task_eval_s=task_s,
                             task_interval=self.config.eval.interval if tasks else None)

    def _checkpoint_to_resume(self) -> Path:
        ckpt = checkpoint_to_resume(self.run_dir, main=self.ctx.is_main)  # skips damaged ones
        if ckpt is None:
            raise PathNotFound(
                f"{self.run_dir} has no checkpoint to resume from (the run stopped before its "
                "first checkpoint); start it again without --resume"
            )
        return ckpt

    def _restore(self, ckpt: Path) -> None:
        state = parallel.load_training_state(ckpt, self.optimizer, self.ctx)
        self.step, self.tokens = state["step"], state["tokens"]
        self.wall_offset, self.interval_losses = state["wall_time"], state["interval_losses"]
        self.val_loss = state.get("val_loss")
        if "plan" in state and self.planner is not None:  # a budgeted run continues its plan
            self.plan = StepPlan(**state["plan"])
            self.planner.planned = state.get("planned", False)
        written_by = state.get("objective", "pretrain")  # older checkpoints: pre-training
        if written_by != self.objective.name:
            command = "train" if written_by == "pretrain" else written_by
            raise CheckpointError(
                f"{ckpt} was written by a {written_by!r} run but this run trains "
                f"{self.objective.name!r}; resume it with `lmforge {command} --resume`")
        stream = parallel.sampler_state(state, self.ctx)
        if stream is not None:
            self.objective.load_state_dict(decode_state(stream))
        elif isinstance(self.objective, PretrainObjective):  # another world size: a fresh stream
            self.objective.restart_stream([self.config.train.seed, self.ctx.rank, self.step])
        parallel.run_on_main(lambda: truncate_after(self.run_dir / "metrics.jsonl", self.step),
                             self.ctx)
        if self.ctx.is_main:
            tqdm.write(f"resuming {self.run_dir} from step {self.step:,} ({ckpt.name})")

    def _loss(self, batch: Any) -> torch.Tensor:
        return self.objective.loss(self.net, batch)

    def _autocast(self):
        return autocast(self.device, self.config.train.dtype)

    def _lr(self, step: int) -> float:
        o = self.config.optim
        cycle = o.cosine_cycle_iters or self.plan.max_steps
        return get_lr_cosine_schedule(step, o.lr, o.min_lr, self.plan.warmup_iters, cycle,
                                      init_lr=o.init_lr)

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step (`TrainStep`) on the objective's next micro-batches; returns (mean
        micro-batch loss, pre-clip gradient norm, lr). Under data parallelism the loss is the
        mean over ranks and the gradients are averaged before clipping."""
        lr = self._lr(self.step)
        batches = self.objective.next_batches(self.step, self.config.train.grad_accum_steps)
        try:
            stats = self.step_fn(batches, lr)
        except NonFiniteStep as e:
            message = _diverged_message(self.step + 1, e.loss, e.grad_norm, self.run_dir)
            raise TrainingDiverged(message) from None
        self.step += 1
        self.tokens += sum(map(self.objective.batch_tokens, batches)) * self.ctx.world_size
        return stats.loss, stats.grad_norm, lr

    def evaluate(self) -> dict[str, float]:
        """The objective's held-out metrics (pre-training: {"val_loss": nats/token}; {}: none),
        under the run's autocast; under FSDP on the wrapped (sharded) module."""
        net = self.net if self.ctx.mode == "fsdp" else self.model  # ddp replicas are equal
        with self._autocast():
            return self.objective.evaluate(net)

    def save(self) -> Path:
        state = {
            "tokens": self.tokens,
            "wall_time": self.wall_time(),
            "interval_losses": self.interval_losses,
            "val_loss": self.val_loss,
            "lr": self._lr(self.step),
            "plan": asdict(self.plan),
            "planned": self.planner is not None and self.planner.planned,
            "objective": self.objective.name,
        }
        return parallel.save_checkpoint(
            self.run_dir, self.step, self.ctx, model=self.model, net=self.net,
            optimizer=self.optimizer, sampler=_EncodedState(self.objective), state=state,
            keep_last=self.config.train.keep_checkpoints or None,
        )

    def wall_time(self) -> float:
        return self.wall_offset + (time.perf_counter() - self._t0)

    def run(self) -> TrainResult:
        t = self.config.train
        self._t0 = time.perf_counter()
        last_log = (self._t0, self.tokens)
        train_loss = None
        bar = tqdm(total=self.plan.max_steps, initial=self.step, unit="step", desc="train",
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True)
        self.net.train()
        alone = not self.ctx.distributed
        # closing: the metrics file and sinks are closed (flushed, finished) on a crash too
        with contextlib.closing(self.metrics), StopRequest(
                abort_on_second=alone, announce=self.ctx.is_main) as stop, bar:
            while self.step < self.plan.max_steps and not stop.requested:
                started = time.perf_counter()
                loss, grad_norm, lr = self.train_step()
                self._replan(time.perf_counter() - started, bar)
                parallel.check_launcher(self.ctx)
                stop.requested = parallel.any_rank(stop.requested, self.ctx)
                self.interval_losses.append(loss)
                bar.update(1)
                done = self.step == self.plan.max_steps
                if self.step % t.log_interval == 0 or done:
                    train_loss = sum(self.interval_losses) / len(self.interval_losses)
                    now = time.perf_counter()
                    speed = (self.tokens - last_log[1]) / max(now - last_log[0], 1e-9)
                    last_log = (now, self.tokens)
                    record: dict[str, Any] = {
                        "step": self.step, "tokens": self.tokens, "train_loss": train_loss,
                        "lr": lr, "grad_norm": grad_norm, "tokens_per_s": round(speed, 1),
                        "wall_time": round(self.wall_time(), 3),
                    }
                    if self.planner is not None:
                        record["planned_steps"] = self.plan.max_steps
                    extra = {k: v for k, v in self.objective.step_metrics().items()
                             if k not in record}  # reward, accuracy, ...: the trainer's win
                    self.metrics.log({**record, **extra})
                    self.interval_losses = []
                    bar.set_postfix({"loss": f"{train_loss:.3f}", "lr": f"{lr:.2e}",
                                     "tok_s": f"{speed:,.0f}",
                                     **{k: f"{v:.3g}" for k, v in extra.items()
                                        if k not in ("loss", "tok_s")}})
                if self.evaluates and (self.step % self.plan.eval_interval == 0 or done):
                    self._timed(self._log_validation, "eval")
                if self.tasks is not None and self.tasks.due(self.step, self.plan.eval_interval,
                                                             done):
                    self._timed(self._log_tasks, "tasks")
                if self.step % self.plan.checkpoint_interval == 0 or done or stop.requested:
                    self._timed(self.save, "checkpoint")
        return TrainResult(self.run_dir, self.step, self.tokens, train_loss, self.val_loss,
                           self.wall_time(), interrupted=self.step < self.plan.max_steps,
                           planned_steps=self.plan.max_steps)

    def _replan(self, step_seconds: float, bar: tqdm) -> None:
        """Under a time budget: fit the rest of the run into what is left of it."""
        if self.planner is None:
            return
        # Ranks agree on the plan: they plan from the same (rank-mean) timings.
        self.planner.record_step(parallel.mean_over_ranks(step_seconds, self.ctx))
        elapsed = parallel.mean_over_ranks(self.wall_time(), self.ctx)
        self.plan = self.planner.replan(self.plan, self.step, elapsed, evaluates=self.evaluates)
        bar.total = self.plan.max_steps

    def _timed(self, action, kind: str) -> None:
        started = time.perf_counter()
        action()
        if self.planner is not None:
            seconds = parallel.mean_over_ranks(time.perf_counter() - started, self.ctx)
            if kind == "eval":
                self.planner.record_eval(seconds)
            elif kind == "tasks":
                self.planner.record_task_eval(seconds)
            else:
                self.planner.record_checkpoint(seconds)

    def _log_validation(self) -> None:
        """One eval pass of the objective: a metrics record (pre-training: val_loss, val_ppl)."""
        scores = self.evaluate()
        if not scores:
            return
        if "val_loss" in scores:
            self.val_loss = scores["val_loss"]
            scores["val_ppl"] = perplexity(self.val_loss)
        self.metrics.log({"step": self.step, "tokens": self.tokens, **scores,
                          "wall_time": round(self.wall_time(), 3)})
        if self.ctx.is_main and "val_loss" in scores:
            plot_losses(read_metrics(self.run_dir / "metrics.jsonl"),
                        self.run_dir / "plots" / "loss.png", title=self.run_dir.name)

    def _log_tasks(self) -> None:
        """One pass over the `[eval]` tasks: a metrics record and the eval plot."""
        assert self.tasks is not None
        scores = self.tasks.evaluate(self.model, self._autocast)
        self.metrics.log({"step": self.step, "tokens": self.tokens,
                          "wall_time": round(self.wall_time(), 3), **scores})
        if self.ctx.is_main:
            plot_eval(read_metrics(self.run_dir / "metrics.jsonl"),
                      self.run_dir / "plots" / "eval.png", title=self.run_dir.name)


class _EncodedState:
    """An objective's state as checkpoints store it (`encode_state`: JSON, tensors as base64)."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def state_dict(self) -> dict:
        return encode_state(self.objective.state_dict())


def _make_optimizer(
    net: torch.nn.Module, config: TrainConfig, ctx: parallel.ParallelContext,
    lr_scales: dict | None = None,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (`make_optimizer`, with µP's per-layer
    `lr_scales`); under zero1 its state is sharded across ranks (`parallel.build_optimizer`)."""
    return make_optimizer(parallel.decay_split(net, ctx), config.optim,
                          build=functools.partial(parallel.build_optimizer, ctx=ctx),
                          lr_scales=lr_scales)


def _diverged_message(step: int, loss: float, grad_norm: float, run_dir: Path) -> str:
    ckpt, _ = newest_intact_checkpoint(run_dir)  # intact: its weights are also finite
    if ckpt is not None:
        kept = f"the last good checkpoint is {ckpt}"
    elif latest_checkpoint(run_dir) is None:
        kept = "no checkpoint was written yet"
    else:
        kept = "no intact checkpoint with finite weights is left"
    return (
        f"training diverged at step {step:,}: loss = {loss}, gradient norm = {grad_norm}. "
        f"The bad update was not applied; {kept}. Try a lower optim.lr, a longer "
        "optim.warmup_iters, optim.grad_clip = 1.0, or train.dtype = 'fp32'."
    )


def train(
    config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
    objective: Objective | ObjectiveFactory | None = None,
) -> TrainResult:
    """Train `config` into `run_dir` (a new run, or continue its latest checkpoint) on
    `objective` (None: pre-training; see `Trainer`)."""
    trainer = Trainer(config, Path(run_dir), resume=resume, progress=progress,
                      objective=objective)
    result = trainer.run()
    if trainer.val_loss is None and trainer.ctx.is_main:
        plot_losses(read_metrics(trainer.run_dir / "metrics.jsonl"),
                    trainer.run_dir / "plots" / "loss.png", title=trainer.run_dir.name)
    parallel.teardown(trainer.ctx)
    return result
