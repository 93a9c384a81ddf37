"""The HTTP contract as pydantic models: the submit body, its consistency rules, the responses.

The field names are the CS336 (2026) experiment service's, so the course's client code works
unchanged: an `ArchitectureConfig` in HuggingFace Llama names, an `OptimizerConfig` in optax
names (AdamW with a warm-up + cosine `lr_scheduler`, or SGD), and the run's sizes. Every rule
is checked here, before anything is reserved; a refused body is HTTP 422 with FastAPI's list of
errors, each naming the field (``loc``) and the rule or range (``msg``):

    hidden_size = num_attention_heads · head_dim      head_dim even (RoPE rotates pairs)
    num_attention_heads % num_key_value_heads = 0     (grouped-query attention)
    total_train_tokens % (seq_len · train_batch_size) = 0, and the resulting optimizer steps
    % n_evals = 0 (each of the n_evals chunks is a whole number of steps)

The last rule needs the service's `seq_len`, so it is `check_against_service` (also 422), with
the vocabulary check (`vocab_size` must cover the service's token ids).

    >>> arch = ArchitectureConfig(hidden_size=64, head_dim=16, num_attention_heads=4,
    ...                           num_key_value_heads=2, num_hidden_layers=2,
    ...                           intermediate_size=128, vocab_size=512)
    >>> arch.num_attention_heads // arch.num_key_value_heads    # query heads per kv head
    2
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmforge.scaling.service.settings import MAX_RUNTIME_S


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class ArchitectureConfig(_Strict):
    """The model shape, in HuggingFace Llama config names."""

    hidden_size: int = Field(ge=8, le=16384, description="d_model")
    head_dim: int = Field(ge=2, le=1024, description="hidden_size / num_attention_heads; even")
    num_attention_heads: int = Field(ge=1, le=256)
    num_key_value_heads: int = Field(ge=1, le=256, description="divides num_attention_heads")
    num_hidden_layers: int = Field(ge=1, le=256)
    intermediate_size: int = Field(ge=1, le=65536, description="SwiGLU hidden size (d_ff)")
    vocab_size: int = Field(ge=2, le=1_048_576, description="covers the service's tokens")
    rms_norm_eps: float = Field(default=1e-5, gt=0, le=0.1)
    rope_theta: float = Field(default=10000.0, gt=0, le=1e9)
    tie_word_embeddings: bool = False
    attention_bias: bool = Field(default=False, description="must be false (no biases)")
    dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _consistent(self) -> ArchitectureConfig:
        h, d, n, kv = (self.hidden_size, self.head_dim, self.num_attention_heads,
                       self.num_key_value_heads)
        if n * d != h:
            raise ValueError(f"hidden_size = {h} must equal num_attention_heads · head_dim = "
                             f"{n} · {d} = {n * d}")
        if d % 2:
            raise ValueError(f"head_dim = {d} must be even (rotary embeddings rotate pairs)")
        if n % kv:
            raise ValueError(f"num_attention_heads = {n} must be divisible by "
                             f"num_key_value_heads = {kv}")
        if self.attention_bias:
            raise ValueError("attention_bias = true is not supported: lmforge models have no "
                             "bias terms; send attention_bias = false")
        return self


class LRScheduler(_Strict):
    """Linear warm-up from `init_value` to `peak_value` over `warmup_frac` of the steps, then a
    cosine to `final_lr_frac · peak_value` at the last step (optax's warmup_cosine_decay)."""

    peak_value: float = Field(gt=0, le=10.0)
    final_lr_frac: float = Field(default=0.1, ge=0, le=1)
    warmup_frac: float = Field(default=0.0, ge=0, le=1)
    init_value: float = Field(default=0.0, ge=0, le=10.0)


class OptimizerConfig(_Strict):
    """AdamW (optax names: beta1, beta2, eps, eps_root) or SGD with optional momentum."""

    type: Literal["adamw", "sgd"] = "adamw"
    lr_scheduler: LRScheduler
    weight_decay: float = Field(default=0.0, ge=0, le=10.0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0, le=1.0)
    eps_root: float = Field(default=0.0, ge=0, le=0.0, description="must be 0 (not supported)")
    grad_clip_norm: float = Field(default=1.0, ge=0, le=1e6, description="0: no clipping")
    momentum: float = Field(default=0.0, ge=0, lt=1, description="SGD only")


class TrainingConfig(_Strict):
    """The body of ``POST /submit``: one training run."""

    architecture_config: ArchitectureConfig
    optimizer_config: OptimizerConfig
    train_batch_size: int = Field(ge=1, le=65536, description="sequences per optimizer step")
    val_batch_size: int = Field(default=32, ge=1, le=65536)
    n_evals: int = Field(ge=1, le=10000, description="validation evaluations, evenly spaced")
    total_train_tokens: int = Field(ge=1, le=10**13)
    max_runtime_seconds: float = Field(ge=1, le=MAX_RUNTIME_S,
                                       description="reserved from the budget; the job is "
                                                   "killed after this many seconds")
    model_seed: int = Field(default=0, ge=0, le=2**31 - 1)

    def steps(self, seq_len: int) -> int:
        """Optimizer steps: total_train_tokens / (seq_len · train_batch_size)."""
        return self.total_train_tokens // (seq_len * self.train_batch_size)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON (defaults filled in): equal configs, equal hashes."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_against_service(config: TrainingConfig, seq_len: int, data_vocab: int
                          ) -> list[dict[str, Any]]:
    """The rules that need the service's settings, as FastAPI-style errors ([] when none).

    >>> body = {"architecture_config": {"hidden_size": 64, "head_dim": 16,
    ...     "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2,
    ...     "intermediate_size": 128, "vocab_size": 512},
    ...     "optimizer_config": {"lr_scheduler": {"peak_value": 1e-3}},
    ...     "train_batch_size": 4, "n_evals": 3, "total_train_tokens": 64 * 4 * 8,
    ...     "max_runtime_seconds": 60}
    >>> [e["msg"][:30] for e in check_against_service(TrainingConfig(**body), 64, 512)]
    ['8 optimizer steps (total_train']
    """
    errors = []
    per_step = seq_len * config.train_batch_size
    if config.total_train_tokens % per_step:
        errors.append(_error(("total_train_tokens",), (
            f"total_train_tokens = {config.total_train_tokens} must be a multiple of "
            f"seq_len · train_batch_size = {seq_len} · {config.train_batch_size} = {per_step}")))
    elif config.steps(seq_len) % config.n_evals:
        errors.append(_error(("n_evals",), (
            f"{config.steps(seq_len)} optimizer steps (total_train_tokens / (seq_len · "
            f"train_batch_size)) must be divisible by n_evals = {config.n_evals}")))
    vocab = config.architecture_config.vocab_size
    if vocab < data_vocab:
        errors.append(_error(("architecture_config", "vocab_size"), (
            f"vocab_size = {vocab} must be at least the service tokenizer's {data_vocab} "
            "(every token id of the training data needs an embedding)")))
    return errors


def _error(loc: tuple[str, ...], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "value_error"}


class BudgetSummary(BaseModel):
    used_seconds: float  # charged + reserved (queued and running experiments reserve their max)
    remaining_seconds: float
    total_budget_seconds: float


class SubmitResponse(BaseModel):
    experiment_id: str
    budget_summary: BudgetSummary


class Experiment(BaseModel):
    experiment_id: str
    status: Literal["queued", "running", "completed", "failed"]
    training_config: dict[str, Any]
    val_losses: list[float]  # one per finished chunk, nats/token
    used_runtime_seconds: float | None  # the charge once finished; None while queued/running
    reserved_seconds: float  # what the experiment holds of the budget now
    failure: Literal["timeout", "unexpected", "cancelled"] | None = None
    error: str | None = None
    num_parameters: int  # non-embedding parameters of the model
    attempts: int  # times a worker started it (a restart re-queues a running experiment)
    submitted_at: str
    started_at: str | None = None
    completed_at: str | None = None


class ExperimentList(BaseModel):
    experiments: list[Experiment]


class FinalSubmission(_Strict):
    training_config: TrainingConfig
    predicted_final_loss: float = Field(gt=0, le=1e4)


class FinalSubmissionOut(BaseModel):
    training_config: dict[str, Any]
    predicted_final_loss: float
    submitted_at: str
