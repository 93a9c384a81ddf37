"""`lmforge export hf` and `lmforge import hf`: HuggingFace Llama interop (`lmforge.infer.hf_io`).

    lmforge export hf runs/demo exported/demo-hf
    lmforge import hf exported/demo-hf runs/demo-imported
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.cli import PATH, console, main


@main.group("export")
def export_group() -> None:
    """Export a trained run to other formats.

    \b
    Example:
      lmforge export hf runs/demo exported/demo-hf
    """


@export_group.command("hf")
@click.argument("run_dir", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option("--checkpoint", type=PATH,
              help="A checkpoints/step_* dir (default: the newest one with intact weights).")
def export_hf_command(run_dir: Path, out_dir: Path, checkpoint: Path | None) -> None:
    """Write RUN_DIR as a HuggingFace Llama model directory OUT_DIR.

    OUT_DIR gets config.json, model.safetensors, generation_config.json and (when the run has a
    tokenizer) tokenizer.json + tokenizer_config.json; transformers' AutoModelForCausalLM and
    AutoTokenizer load it (the format vLLM and lm-evaluation-harness read). Ablated models (NoPE,
    post-norm, no norm, SiLU FFN) have no Llama form and are refused.

    \b
    Example:
      lmforge export hf runs/demo exported/demo-hf
    """
    from lmforge.cli.train import RUN_INPUTS
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.infer.hf_io import export_hf

    inputs = [*(run_dir / name for name in RUN_INPUTS), checkpoint]
    refuse_overwriting_inputs([], inputs, output_dirs=[out_dir])
    out = export_hf(run_dir, out_dir, checkpoint=checkpoint)
    console.print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")


@main.group("import")
def import_group() -> None:
    """Import models from other formats as lmforge run directories.

    \b
    Example:
      lmforge import hf exported/demo-hf runs/demo-imported
    """


@import_group.command("hf")
@click.argument("model_dir", type=PATH)
@click.argument("out_run_dir", type=PATH)
def import_hf_command(model_dir: Path, out_run_dir: Path) -> None:
    """Turn a HuggingFace Llama checkpoint MODEL_DIR into an lmforge run directory OUT_RUN_DIR.

    MODEL_DIR needs config.json and safetensors weights (sharded is fine). Grouped-query
    attention and Llama 3 / linear RoPE scaling are imported; biases and other RoPE scaling
    types are refused. tokenizer.json is converted only when it
    encodes exactly like an lmforge tokenizer (byte-level BPE with GPT-2's split pattern).

    \b
    Example:
      lmforge import hf exported/demo-hf runs/demo-imported
      lmforge generate --run runs/demo-imported --prompt "Alice was"
    """
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.infer.hf_io import import_hf

    refuse_overwriting_inputs([], [model_dir], output_dirs=[out_run_dir])
    out = import_hf(model_dir, out_run_dir)
    note = "" if (out / "tokenizer").is_dir() else (
        "; no tokenizer imported (none, or not byte-level BPE with GPT-2's pattern)"
    )
    console.print(f"wrote run directory {out}{note}")
