"""Weight mapping between lmforge's TransformerLM and HuggingFace `LlamaForCausalLM`.

The two architectures compute the same function; only names and one layout detail differ.
Our RoPE rotates adjacent pairs (x[2i], x[2i+1]); Llama's `rotate_half` pairs x[i] with
x[i + d/2]. Both use frequency θ^(-2i/d) for pair i, so permuting the rows of each head's q and k
projection — our row 2i+c goes to Llama row c·d/2 + i — makes Llama rotate exactly the
coordinates we rotate. The permutation is applied to q and k alike, so q·k is unchanged.

Grouped-query attention maps as is (Llama's `num_key_value_heads`: k_proj / v_proj have
num_kv_heads · head_dim rows, permuted per key/value head), and so does RoPE scaling ("llama3",
"linear": `rope_parameters` in transformers 5, `rope_scaling` before it).

Only the default architecture maps (pre-norm RMSNorm, RoPE, SwiGLU); ablations have no Llama form.
"""

from __future__ import annotations

from torch import Tensor

from lmforge.model.config import ModelConfig

_LAYER_NAMES = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ln1.weight": "input_layernorm.weight",
    "ln2.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}


def check_llama_compatible(config: ModelConfig) -> None:
    """Raise ValueError naming the first setting that Llama cannot represent."""
    expected = {"norm": "rmsnorm", "norm_position": "pre", "positional": "rope", "ffn": "swiglu"}
    for key, value in expected.items():
        if getattr(config, key) != value:
            raise ValueError(
                f"model.{key} = {getattr(config, key)!r} has no HuggingFace Llama equivalent "
                f"(Llama needs {key} = {value!r})"
            )


def llama_config_kwargs(config: ModelConfig) -> dict:
    """Keyword arguments for `transformers.LlamaConfig` describing the same architecture."""
    check_llama_compatible(config)
    scaling = config.rope_scaling or {"rope_type": "default"}
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        # transformers 5 reads rope_parameters; earlier versions rope_theta and rope_scaling.
        "rope_parameters": {**scaling, "rope_theta": config.rope_theta},
        "rope_scaling": None if config.rope_scaling is None else dict(config.rope_scaling),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
    }


def adjacent_to_half_split(w: Tensor, num_heads: int) -> Tensor:
    """Permute q/k projection rows from adjacent-pair RoPE order to Llama's half-split order.

    w: (num_heads·head_dim, d_in). Within each head, row 2i+c moves to row c·head_dim/2 + i.
    """
    out_features, d_in = w.shape
    return w.reshape(num_heads, out_features // num_heads // 2, 2, d_in).transpose(1, 2).reshape(
        out_features, d_in
    )


def half_split_to_adjacent(w: Tensor, num_heads: int) -> Tensor:
    """Inverse of `adjacent_to_half_split`."""
    out_features, d_in = w.shape
    return w.reshape(num_heads, 2, out_features // num_heads // 2, d_in).transpose(1, 2).reshape(
        out_features, d_in
    )


def _heads(name: str, config: ModelConfig) -> int:
    """Heads in the rows of projection `name`: q_proj num_heads, k_proj num_kv_heads."""
    return config.kv_heads if name.startswith("attn.k_proj") else config.num_heads


def to_llama_state_dict(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict → a `LlamaForCausalLM` state dict (views or copies, never shared)."""
    check_llama_compatible(config)
    out = {
        "model.embed_tokens.weight": state["token_embeddings.weight"],
        "model.norm.weight": state["ln_final.weight"],
        "lm_head.weight": state["lm_head.weight"],
    }
    for i in range(config.num_layers):
        for ours, theirs in _LAYER_NAMES.items():
            w = state[f"layers.{i}.{ours}"]
            if ours.startswith(("attn.q_proj", "attn.k_proj")):
                w = adjacent_to_half_split(w, _heads(ours, config))
            out[f"model.layers.{i}.{theirs}"] = w
    return out


def from_llama_state_dict(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """A `LlamaForCausalLM` state dict → ours (the inverse of `to_llama_state_dict`)."""
    check_llama_compatible(config)
    out = {
        "token_embeddings.weight": state["model.embed_tokens.weight"],
        "ln_final.weight": state["model.norm.weight"],
        "lm_head.weight": state.get("lm_head.weight", state["model.embed_tokens.weight"]),
    }
    for i in range(config.num_layers):
        for ours, theirs in _LAYER_NAMES.items():
            w = state[f"model.layers.{i}.{theirs}"]
            if ours.startswith(("attn.q_proj", "attn.k_proj")):
                w = half_split_to_adjacent(w, _heads(ours, config))
            out[f"layers.{i}.{ours}"] = w
    return out
