"""HuggingFace interop: export a run as a Llama model directory, import one back as a run.

`export_hf(run_dir, out_dir)` writes what `transformers.AutoModelForCausalLM.from_pretrained`
and `AutoTokenizer.from_pretrained` read (the format vLLM and lm-evaluation-harness take)::

    out_dir/
        config.json              LlamaConfig fields (`lmforge.model.hf.llama_config_kwargs`)
        generation_config.json   bos/eos ids
        model.safetensors        float32 weights in Llama names, q/k rows permuted for RoPE
        tokenizer.json           `export_hf_tokenizer_json` (only when the run has a tokenizer)
        tokenizer_config.json    PreTrainedTokenizerFast, <|endoftext|> as bos/eos

The files are hand-written JSON, so exporting needs neither `transformers` nor `tokenizers`.
Tied embeddings are stored once (`tie_word_embeddings: true`, no `lm_head.weight`), as HF does.
The directory is built beside `out_dir` and renamed into place, so a crash never leaves half of
one. Ablated models (NoPE, post-norm, ...) have no Llama form: `check_llama_compatible`'s
ValueError names the setting. A µP model (`model.parametrization = "mup"`) is exported with its
attention and output multipliers folded into q_proj and lm_head (`TransformerLM.sp_state_dict`),
so it imports back as an SP model with the same logits. Running out of disk space in either
direction raises
`DiskFullError` (nothing is left behind).

`import_hf(model_dir, out_run_dir)` reverses it for a Llama-architecture checkpoint
(`config.json` + `model.safetensors` or sharded `model-*.safetensors` with
`model.safetensors.index.json`): the run directory is written as training writes one
(`train.run_dir.prepare_run_dir`: `config.toml`, `run.json`, `tokenizer/`) with a step-0 run
checkpoint holding the trainer's AdamW (fresh state, `train.checkpoint.initial_training_state`), so
`load_run`, `lmforge generate` and `lmforge train --resume --set data.train=...` accept it.
Grouped-query attention (`num_key_value_heads` < `num_attention_heads`: Llama 2 70B, Llama 3,
TinyLlama, SmolLM) becomes `model.num_kv_heads`, and Llama 3 / linear RoPE scaling
(`rope_parameters` in transformers 5, `rope_scaling` before) `model.rope_scaling`; export
writes both back (`num_key_value_heads`; `rope_parameters` and `rope_scaling`).
Refused with the reason: biases, other RoPE scaling types (dynamic, YaRN, LongRoPE, ...: the
message names rope_scaling.rope_type), partial rotary embeddings, a non-SiLU activation, a
head_dim other than hidden_size / heads, and `.bin`-only checkpoints; a truncated or corrupt
file (JSON, safetensors) or non-finite weights are refused naming the file. A `tokenizer.json` is
imported as an lmforge tokenizer only when it encodes exactly like one (byte-level BPE with
GPT-2's split pattern, no normalizer) — ours round-trips, Llama 3's (another regex) does not and
is left out (the run then has no `tokenizer/` directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from lmforge import ENDOFTEXT as EOT
from lmforge.errors import InputError, InvalidArgument, PathExists, PathNotFound
from lmforge.fsutil import atomic_directory
from lmforge.model.config import ModelConfig
from lmforge.model.hf import from_llama_state_dict, llama_config_kwargs, to_llama_state_dict
from lmforge.model.rope_scaling import ROPE_SCALING_TYPES, check_rope_scaling


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path, fix: str) -> dict:
    """A JSON object file of a model directory; ValueError naming it (and `fix`) if corrupt."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); it is truncated or corrupt: {fix}") \
            from None
    if not isinstance(doc, dict):
        raise InputError(f"{path} holds a JSON {type(doc).__name__}, not an object: {fix}")
    return doc


_REDOWNLOAD = "download or copy the model directory again"


def _refuse_nonempty(target: Path) -> None:
    """Refuse an output directory that already holds files (an empty one is replaced)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PathExists(
            f"{target} already exists and is not empty; choose another output directory or "
            "delete it first"
        )


# ------------------------------------------------------------------------------------- export


def hf_config_dict(config: ModelConfig, eot_id: int | None) -> dict:
    """The `config.json` of a `LlamaForCausalLM` computing the same function as our model."""
    kwargs = llama_config_kwargs(config)  # ValueError for ablations, naming the setting
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **kwargs,
        "head_dim": config.head_dim,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
        "dtype": "float32",
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
    }


def export_hf(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Write run `run_dir` as an HF Llama model dir: its newest checkpoint with intact weights,
    or `checkpoint` (see `train.run_dir.load_run`)."""
    from lmforge.tokenizer.formats import export_hf_tokenizer_json
    from lmforge.train.checkpoint import disk_full_error
    from lmforge.train.run_dir import load_run

    out_dir = Path(out_dir)
    model, tokenizer, train_config = load_run(run_dir, device="cpu", checkpoint=checkpoint)
    config = train_config.model
    eot_id = None
    if tokenizer is not None:
        if tokenizer.vocab_size > config.vocab_size:
            raise InputError(
                f"the run's tokenizer has {tokenizer.vocab_size} ids but model.vocab_size = "
                f"{config.vocab_size}; the model cannot score every token, so it cannot be exported"
            )
        eot_id = tokenizer.id_of(EOT.encode()) if EOT in tokenizer.special_tokens else None
    hf_config = hf_config_dict(config, eot_id)
    # µP's attention and output multipliers are folded into q_proj and lm_head (exact; an SP
    # Llama has no multipliers), so the export is a plain Llama computing the same logits.
    weights = to_llama_state_dict(model.sp_state_dict(), config)
    if config.tie_embeddings:
        del weights["lm_head.weight"]  # the same tensor as embed_tokens; HF re-ties it on load
    weights = {k: v.detach().contiguous() for k, v in weights.items()}
    _refuse_nonempty(out_dir)
    with disk_full_error(out_dir, "run `lmforge export hf` again"), \
            atomic_directory(out_dir) as tmp:
        _write_json(tmp / "config.json", hf_config)
        _write_json(tmp / "generation_config.json", {
            "_from_model_config": True, "bos_token_id": eot_id, "eos_token_id": eot_id,
        })
        safetensors.torch.save_file(weights, str(tmp / "model.safetensors"), {"format": "pt"})
        if tokenizer is not None:
            export_hf_tokenizer_json(tokenizer, tmp / "tokenizer.json")
            eot = EOT if eot_id is not None else None
            _write_json(tmp / "tokenizer_config.json", {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": eot,
                "eos_token": eot,
                "model_max_length": config.context_length,
                "clean_up_tokenization_spaces": False,
            })
    return out_dir


# ------------------------------------------------------------------------------------- import


def model_config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """A ModelConfig for a Llama `config.json` dict; ValueError for what we cannot represent."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise InputError(
            f"{source} describes model_type={hf.get('model_type')!r} ({', '.join(archs) or '?'}); "
            "only Llama-architecture checkpoints (LlamaForCausalLM) can be imported"
        )
    sizes = ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
             "num_attention_heads", "intermediate_size")
    if missing := [k for k in sizes if k not in hf]:
        raise InputError(f"{source} lacks {missing[0]!r}; it is incomplete: {_REDOWNLOAD}")
    if bad := [f"{k}={hf[k]!r}" for k in sizes
               if not isinstance(hf[k], int) or isinstance(hf[k], bool) or hf[k] < 1]:
        raise InputError(f"{source} has {', '.join(bad)}; these sizes must be positive integers: "
                         f"{_REDOWNLOAD}")
    heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    if not isinstance(kv_heads, int) or isinstance(kv_heads, bool) or kv_heads < 1 \
            or heads % kv_heads:
        raise InputError(
            f"{source} has num_key_value_heads={kv_heads!r}, which does not divide "
            f"num_attention_heads={heads}; grouped-query attention needs a divisor: {_REDOWNLOAD}"
        )
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise InputError(f"{source} sets {key}=true; lmforge linear layers have no biases")
    if hf.get("hidden_act", "silu") != "silu":
        act = hf["hidden_act"]
        raise InputError(f"{source} has hidden_act={act!r}; lmforge uses SwiGLU (silu)")
    rope, scaling = _rope_from_hf(hf, source)
    d_model = hf["hidden_size"]
    if hf.get("head_dim") not in (None, d_model // heads):
        raise InputError(
            f"{source} has head_dim={hf['head_dim']} but hidden_size/num_attention_heads = "
            f"{d_model // heads}; lmforge needs them equal"
        )
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf["max_position_embeddings"],
            d_model=d_model,
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            d_ff=hf["intermediate_size"],
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            num_kv_heads=None if kv_heads == heads else kv_heads,
            rope_scaling=scaling,
        )
    except (ValueError, TypeError) as e:  # ModelConfig's checks, a non-number rope_theta/eps
        raise InputError(f"{source}: {e}; lmforge cannot build this model") from None


def _rope_from_hf(hf: dict, source: str) -> tuple[dict, dict | None]:
    """(RoPE settings, our `rope_scaling` or None) of a Llama `config.json`.

    transformers 5 writes `rope_parameters` (rope_type, rope_theta and the scaling parameters);
    earlier versions `rope_theta` and a `rope_scaling` dict ("type" in the oldest). A Llama 3
    config without `original_max_position_embeddings` means max_position_embeddings, as in
    transformers. Types other than "default", "llama3" and "linear" are refused, naming
    rope_scaling.rope_type.
    """
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise InputError(f"{source} has rope_parameters / rope_scaling {rope!r}, not an object: "
                         f"{_REDOWNLOAD}")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor")) not in (None, 1, 1.0):
        raise InputError(f"{source} sets partial_rotary_factor; lmforge rotates whole heads")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return rope, None
    if rope_type not in ROPE_SCALING_TYPES:
        supported = ", ".join(repr(t) for t in ("default", *ROPE_SCALING_TYPES))
        raise InputError(
            f"{source} has rope_scaling.rope_type = {rope_type!r}, which lmforge does not "
            f"implement; supported rope types: {supported}"
        )
    scaling = {k: rope[k] for k in ROPE_SCALING_TYPES[rope_type] if k in rope}
    if rope_type == "llama3":
        scaling.setdefault("original_max_position_embeddings", hf.get(
            "original_max_position_embeddings", hf["max_position_embeddings"]))
    try:
        return rope, check_rope_scaling({"rope_type": rope_type, **scaling}, "rope_scaling")
    except InvalidArgument as e:
        raise InputError(f"{source}: {e}") from None


def _read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint directory."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, _REDOWNLOAD).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index} has no weight_map object; {_REDOWNLOAD}")
        files = sorted({model_dir / f for f in weight_map.values()})
    elif (model_dir / "model.safetensors").is_file():
        files = [model_dir / "model.safetensors"]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        hint = " (it has PyTorch .bin files: re-save it with safe_serialization=True)" if any(
            model_dir.glob("*.bin")) else ""
        raise PathNotFound(f"{model_dir} holds no .safetensors weights{hint}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise PathNotFound(f"{f} is listed in {index.name} but missing; download it")
        try:
            tensors = safetensors.torch.load_file(str(f))
        except safetensors.SafetensorError as e:
            raise InputError(
                f"{f} is not a readable safetensors file ({e}); it is truncated or corrupt: "
                f"{_REDOWNLOAD}"
            ) from None
        bad = [n for n, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise InputError(
                f"{f} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. "
                f"{bad[0]}; the model is unusable: {_REDOWNLOAD}"
            )
        state.update(tensors)
    return state


def _hf_tokenizer(path: Path):
    """Our Tokenizer for an HF `tokenizer.json` that encodes exactly like one, else None."""
    from lmforge.tokenizer import Tokenizer, TokenizerInputError
    from lmforge.tokenizer.formats import parse_hf_tokenizer_json

    doc = _read_json(path, f"{_REDOWNLOAD}, or delete {path.name} to import without a tokenizer")
    parts = parse_hf_tokenizer_json(doc)
    if parts is None:
        return None
    try:
        return Tokenizer(*parts)
    except TokenizerInputError:
        return None


def import_hf(model_dir: str | os.PathLike, out_run_dir: str | os.PathLike) -> Path:
    """Write a Llama checkpoint dir as an lmforge run dir (with `tokenizer/` when convertible)."""
    from lmforge.config import TrainConfig
    from lmforge.model import TransformerLM
    from lmforge.train.checkpoint import (
        disk_full_error,
        initial_training_state,
        save_run_checkpoint,
    )
    from lmforge.train.run_dir import prepare_run_dir
    from lmforge.train.step import decay_groups, make_optimizer

    model_dir, out_run_dir = Path(model_dir), Path(out_run_dir)
    _refuse_nonempty(out_run_dir)
    if not (model_dir / "config.json").is_file():
        raise PathNotFound(f"{model_dir} has no config.json; pass a HuggingFace model dir")
    hf = _read_json(model_dir / "config.json", _REDOWNLOAD)
    try:
        config = model_config_from_hf(hf, str(model_dir / "config.json"))
    except KeyError as e:
        raise InputError(
            f"{model_dir / 'config.json'} lacks {e.args[0]!r}; it is incomplete: {_REDOWNLOAD}"
        ) from None
    state = {k: v for k, v in _read_safetensors(model_dir).items() if "rotary_emb" not in k}
    try:
        ours = from_llama_state_dict(state, config)
    except KeyError as e:
        raise InputError(
            f"{model_dir} lacks tensor {e.args[0]} that its config.json implies; the checkpoint "
            "is incomplete (re-download it) or not a plain Llama model"
        ) from None
    used = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    used |= {f"model.layers.{i}.{n}" for i in range(config.num_layers) for n in (
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
    if extra := sorted(set(state) - used):
        raise InputError(
            f"{model_dir} has tensors lmforge's Llama has no place for: {', '.join(extra[:5])}"
        )
    model = TransformerLM.from_config(config)
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in ours.items()})
    except RuntimeError as e:  # a tensor whose shape is not the one config.json implies
        first = str(e).strip().splitlines()[-1].strip()
        raise InputError(f"{model_dir}: the tensors do not fit its config.json ({first}); "
                         f"{_REDOWNLOAD}") from None
    tokenizer = None
    if (model_dir / "tokenizer.json").is_file():
        tokenizer = _hf_tokenizer(model_dir / "tokenizer.json")
        if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
            tokenizer = None
    train_config = TrainConfig(model=config)
    with disk_full_error(out_run_dir, "run `lmforge import hf` again"), \
            atomic_directory(out_run_dir) as tmp:
        prepare_run_dir(tmp, train_config, model, torch.device("cpu"), tokenizer=tokenizer)
        optimizer = make_optimizer(decay_groups(model), train_config.optim)
        save_run_checkpoint(tmp, 0, model, optimizer, initial_training_state(str(model_dir)))
    return out_run_dir
