"""`ModelConfig`: the shape of a TransformerLM and its ablation switches, as plain data.

The defaults are the Llama-style architecture (pre-norm RMSNorm, RoPE, SwiGLU, untied
embeddings, one key/value head per query head). `num_kv_heads` < `num_heads` gives
grouped-query attention (k_proj / v_proj output num_kv_heads · head_dim; Llama 2 70B, Llama 3)
and `rope_scaling` Llama 3's or linear RoPE scaling (`lmforge.model.rope_scaling`). Each
ablation switch turns one component off so its contribution can be measured; the resulting
model keeps the same parameter names where the parameter still exists.

`parametrization = "mup"` with `mup_base_width` is the Maximal Update Parametrization (Tensor
Programs V, Yang et al. 2022, Table 3 / the `mup` package) with width multiplier
m = d_model / mup_base_width: the multipliers the forward pass needs are properties here
(`width_mult`, `attention_scale`, `output_multiplier`) so every attention path and every user of
the output layer reads the same numbers; the init and per-layer learning rates live in
`lmforge.model.transformer` (`TransformerLM.lr_scales`). At m = 1 µP is SP exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from lmforge.errors import InvalidArgument
from lmforge.model.layers import default_d_ff
from lmforge.model.rope_scaling import check_rope_scaling

_CHOICES = {
    "norm": ("rmsnorm", "none"),
    "norm_position": ("pre", "post"),
    "positional": ("rope", "nope"),
    "ffn": ("swiglu", "silu"),
    "attention": ("reference", "sdpa", "flash"),
    "parametrization": ("sp", "mup"),
}


@dataclass
class ModelConfig:
    vocab_size: int  # number of token ids the embedding and output layers cover
    context_length: int  # longest sequence the model accepts (RoPE tables are this long)
    d_model: int  # residual stream width
    num_layers: int  # transformer blocks
    num_heads: int  # attention heads; head dim = d_model / num_heads
    d_ff: int | None = None  # FFN hidden size; None: 8/3·d_model→64 (SwiGLU) or 4·d_model (SiLU)
    rope_theta: float = 10000.0  # RoPE base θ
    norm: str = "rmsnorm"  # "rmsnorm" | "none" (ablation: no normalisation at all)
    norm_position: str = "pre"  # "pre" (x + f(norm(x))) | "post" (norm(x + f(x)))
    positional: str = "rope"  # "rope" | "nope" (no positional information; causal mask only)
    ffn: str = "swiglu"  # "swiglu" | "silu" (ungated W2·SiLU(W1 x))
    tie_embeddings: bool = False  # share token_embeddings.weight with lm_head.weight
    attention: str = "reference"  # "reference" (ours) | "sdpa" (torch's fused kernels) | "flash"
    # ("flash": our FlashAttention-2, Triton on GPU / TRITON_INTERPRET=1, tiled PyTorch otherwise)
    checkpoint_activations: bool = False  # recompute each block's activations in backward
    norm_eps: float = 1e-5  # RMSNorm epsilon
    num_kv_heads: int | None = None  # key/value heads (GQA), dividing num_heads; None: num_heads
    rope_scaling: dict | None = None  # {rope_type = "llama3" | "linear", ...}; None: plain RoPE
    parametrization: str = "sp"  # "sp" (standard) | "mup" (µP, Tensor Programs V)
    mup_base_width: int | None = None  # µP: the d_model whose hyperparameters transfer (m = 1)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InvalidArgument(f"model.{name} must be a positive integer, got {value!r}")
        for name in ("tie_embeddings", "checkpoint_activations"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(
                    f"model.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise InvalidArgument(
                    f"model.{name} must be a positive finite number, got {value!r}")
        if self.d_model % self.num_heads:
            raise InvalidArgument(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}; pick num_heads that divides d_model (e.g. "
                f"{_divisor_hint(self.d_model, self.num_heads)})"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise InvalidArgument(
                f"RoPE needs an even head dimension, but d_model/num_heads = {self.head_dim}; "
                "change num_heads or set positional = 'nope'"
            )
        if self.num_kv_heads is not None and (
            not _is_int(self.num_kv_heads) or self.num_kv_heads < 1
            or self.num_heads % self.num_kv_heads
        ):
            n = self.num_heads
            divisors = [h for h in range(1, min(n, 10_000) + 1) if n % h == 0][:12]
            raise InvalidArgument(
                f"model.num_kv_heads = {self.num_kv_heads!r} must be a positive integer dividing "
                f"model.num_heads = {self.num_heads} (each key/value head serves num_heads / "
                f"num_kv_heads query heads): pick one of {', '.join(map(str, divisors))}, or "
                "omit it for one key/value head per query head"
            )
        if self.d_ff is not None and (not _is_int(self.d_ff) or self.d_ff < 1):
            raise InvalidArgument(
                f"model.d_ff must be a positive integer or omitted, got {self.d_ff!r}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InvalidArgument(
                    f"model.{name} = {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if self.rope_scaling is not None:
            if self.positional != "rope":
                raise InvalidArgument(
                    f"model.rope_scaling is set but model.positional = {self.positional!r} has "
                    "no RoPE to scale; remove model.rope_scaling")
            self.rope_scaling = check_rope_scaling(self.rope_scaling)
        self._check_mup()

    def _check_mup(self) -> None:
        base = self.mup_base_width
        if base is not None and (not _is_int(base) or base < 1):
            raise InvalidArgument(
                f"model.mup_base_width must be a positive integer (the d_model at which µP "
                f"equals SP), got {base!r}")
        if self.parametrization != "mup":
            return
        if base is None:
            raise InvalidArgument(
                "model.parametrization = 'mup' needs model.mup_base_width, the width whose "
                f"hyperparameters transfer (e.g. mup_base_width = {self.d_model} for this model)")
        if self.tie_embeddings:
            raise InvalidArgument(
                "model.parametrization = 'mup' with model.tie_embeddings = true is not supported "
                "(µP treats the embedding and the output layer differently); untie them")

    @property
    def width_mult(self) -> float:
        """µP's width multiplier m = d_model / mup_base_width; 1.0 under SP.

        >>> ModelConfig(64, 8, 256, 1, 4, parametrization="mup", mup_base_width=64).width_mult
        4.0
        """
        if self.parametrization != "mup" or self.mup_base_width is None:
            return 1.0
        return self.d_model / self.mup_base_width

    @property
    def attention_scale(self) -> float | None:
        """The softmax scale of q·kᵀ, the ONE number every attention path uses; None means
        the standard 1/√head_dim (each backend's own default, so SP runs bit-for-bit unchanged).

        SP: 1/√head_dim (Vaswani et al. 2017). µP: √base_head_dim / head_dim, i.e. 1/head_dim
        ("attention 1/d", Tensor Programs V §4) times the constant √base_head_dim so that the
        base model (m = 1) is SP exactly; base_head_dim = head_dim / m (widths scale at a fixed
        number of heads, so the head dimension grows with m). Equal to 1/√(head_dim · m).

        >>> print(ModelConfig(64, 8, 256, 1, 4).attention_scale)  # SP: 1/√64 by default
        None
        >>> ModelConfig(64, 8, 256, 1, 4, parametrization="mup", mup_base_width=64).attention_scale
        0.0625
        """
        m = self.width_mult
        return None if m == 1.0 else 1.0 / math.sqrt(self.head_dim * m)

    @property
    def ffn_width_mult(self) -> float:
        """µP's multiplier of the FFN hidden width: hidden_dim over the base model's (the same
        d_ff rule at d_model = mup_base_width; an explicit d_ff scales with d_model, i.e. by m).
        Differs from m when the default d_ff's rounding to 64 is coarse (tiny widths).

        >>> ModelConfig(64, 8, 64, 1, 4, parametrization="mup", mup_base_width=16).ffn_width_mult
        3.0
        """
        if self.width_mult == 1.0 or self.d_ff is not None:
            return self.width_mult
        base = self.mup_base_width or self.d_model
        base_hidden = default_d_ff(base) if self.ffn == "swiglu" else 4 * base
        return self.hidden_dim / base_hidden

    @property
    def output_multiplier(self) -> float:
        """Factor on the output logits: µP's 1/m (`mup.MuReadout`), 1.0 under SP."""
        return 1.0 / self.width_mult

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used (resolving the `num_kv_heads=None` default)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def hidden_dim(self) -> int:
        """The FFN hidden size actually used (resolving the `d_ff=None` default)."""
        if self.d_ff is not None:
            return self.d_ff
        return default_d_ff(self.d_model) if self.ffn == "swiglu" else 4 * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"unknown model setting(s): {', '.join(unknown)}")
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _divisor_hint(d_model: int, num_heads: int) -> int:
    """The divisor of d_model nearest to num_heads (the smaller on a tie; 1 if none is near).

    >>> _divisor_hint(384, 5), _divisor_hint(384, 7), _divisor_hint(6, 100)
    (4, 6, 6)
    """
    target = min(num_heads, d_model)
    for k in range(min(target, 100_000)):  # bounded: absurd sizes must not hang the message
        for h in (target - k, target + k):
            if 1 <= h <= d_model and d_model % h == 0:
                return h
    return 1
