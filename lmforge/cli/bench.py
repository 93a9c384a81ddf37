"""`lmforge bench model` and `lmforge bench attention`: step timing, MFU, memory, profiles.

    lmforge bench model --size tiny --mode train-step --dtype both
    lmforge bench model --config configs/demo.toml --mode forward-backward --profile prof/
    lmforge bench attention --seq-lens 128,256,512 --head-dims 32,64 --json attn.json
"""

from __future__ import annotations

import datetime
import json
import platform
from dataclasses import asdict, replace
from pathlib import Path

import click
from rich.table import Table

from lmforge.cli import COUNT, PATH, UserError, console, main

SIZE_NAMES = ("tiny", "cpu-small", "small", "medium", "large", "xl", "2.7B")  # lmforge.bench.SIZES
MODES = ("forward", "forward-backward", "train-step")


@main.group("bench")
def bench_group() -> None:
    """Benchmark and profile models and attention implementations."""


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected integers like 128,256, got {value!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers like 128,256, got {value!r}")
    return values


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def _machine() -> dict:
    import torch

    return {"date": datetime.date.today().isoformat(), "platform": platform.platform(),
            "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _write_json(path: Path, payload: dict) -> None:
    from lmforge.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {path}")


def _model_config(size: str | None, config_path: Path | None, vocab_size: int | None):
    from lmforge.bench import size_config
    from lmforge.config import load_config

    if size is not None and config_path is None:
        config = size_config(size)
    elif config_path is not None and size is None:
        config = load_config(config_path).model
    else:
        raise click.UsageError("give exactly one of --size NAME or --config FILE")
    return config if vocab_size is None else replace(config, vocab_size=vocab_size)


@bench_group.command("model")
@click.option("--size", type=click.Choice(SIZE_NAMES), help="Named model size.")
@click.option("--config", "config_path", type=PATH, help="TOML config; its [model] is used.")
@click.option("--mode", type=click.Choice(MODES), default="forward", show_default=True)
@click.option("--batch-size", type=COUNT, default=4, show_default=True)
@click.option("--context-length", type=COUNT, default=None,
              help="Tokens per sequence (default: the size's 256 or the config's).")
@click.option("--vocab-size", type=COUNT, default=None, help="Override the vocabulary (10,000).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--steps", type=COUNT, default=10, show_default=True, help="Timed steps.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "both"]), default="fp32",
              show_default=True, help="bf16 = autocast; both = compare (speed-up, loss diff).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--attention", type=click.Choice(["reference", "sdpa", "flash"]), default=None,
              help="Attention backend (default: the config's).")
@click.option("--checkpoint-activations", is_flag=True, default=None,
              help="Recompute each block's activations in backward.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, auto.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak TFLOP/s for MFU (default: spec sheet for known GPUs, else measured).")
@click.option("--profile", "profile_dir", type=PATH, help="Also write a profiler trace here.")
@click.option("--json", "json_path", type=PATH, help="Write the results as JSON.")
def bench_model_command(size, config_path, mode, batch_size, context_length, vocab_size, warmup,
                        steps, dtype, compile_, attention, checkpoint_activations, device,
                        peak_tflops, profile_dir, json_path) -> None:
    """Time forward / forward-backward / train steps of a model; tokens/s, memory, MFU.

    \b
    Examples:
      lmforge bench model --size tiny --mode train-step --dtype both
      lmforge bench model --size small --device cuda --dtype bf16 --mode train-step --json r.json
      lmforge bench model --config configs/demo.toml --profile prof/ --steps 3
    """
    import torch

    from lmforge.bench import bench_model
    from lmforge.bench.harness import with_overrides
    from lmforge.fsutil import refuse_overwriting_inputs

    refuse_overwriting_inputs([json_path], [config_path], output_dirs=[profile_dir])
    config = _model_config(size, config_path, vocab_size)
    config = with_overrides(config, context_length, attention, checkpoint_activations)
    _check_memory(config, mode, batch_size, device)
    dtypes = ["fp32", "bf16"] if dtype == "both" else [dtype]
    kwargs = dict(mode=mode, batch_size=batch_size, warmup=warmup, steps=steps, compile=compile_,
                  device=device)
    try:
        peak = None if peak_tflops is None else peak_tflops * 1e12
        results = [bench_model(config, dtype=d, peak=peak, **kwargs) for d in dtypes]
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --batch-size or --context-length, or add "
                        "--checkpoint-activations") from None
    _print_model_results(size or str(config_path), results)
    comparison = None
    if len(results) == 2:
        fp32, bf16 = results
        comparison = {"speedup": fp32.mean_s / bf16.mean_s, "loss_diff": bf16.loss - fp32.loss}
        console.print(f"bf16 autocast vs fp32: {comparison['speedup']:.2f}x speed-up, loss "
                      f"difference {comparison['loss_diff']:+.2e} nats/token (same batch)")
    if profile_dir is not None:
        _profile(config, profile_dir, dtypes, kwargs)
    if json_path is not None:
        _write_json(json_path, {"benchmark": "model", "size": size, "config": config.to_dict(),
                                "results": [asdict(r) for r in results],
                                "bf16_vs_fp32": comparison, "machine": _machine()})


def _check_memory(config, mode: str, batch_size: int, device: str) -> None:
    """Refuse, before anything is allocated, a benchmark whose estimated peak memory
    (`lmforge.model.memory_estimate`, fp32) exceeds what the device has available now.

    `forward` runs under no_grad, so it holds one block's activations at a time (estimated as
    those of a one-layer model) besides the weights."""
    from lmforge.device import select_device
    from lmforge.model import memory_estimate
    from lmforge.model.accounting import available_memory, fits_in_memory

    dev = select_device(device)
    est = memory_estimate(config, batch_size)
    if mode == "forward":
        est["activations"] = memory_estimate(replace(config, num_layers=1),
                                             batch_size)["activations"]
    parts = {"forward": ("parameters", "activations"),
             "forward-backward": ("parameters", "gradients", "activations"),
             "train-step": ("parameters", "gradients", "optimizer", "activations")}[mode]
    needed = sum(est[p] for p in parts)
    if not fits_in_memory(needed, dev):
        raise UserError(
            f"{mode} of this model at batch {batch_size:,} × {config.context_length:,} tokens "
            f"needs about {needed / 2**30:,.1f} GiB but {dev} has "
            f"{(available_memory(dev) or 0) / 2**30:,.1f} GiB available; lower --batch-size or "
            "--context-length, add --checkpoint-activations, or pick a smaller --size")


def _print_model_results(name: str, results) -> None:
    r0 = results[0]
    table = Table(title=f"{name}: {r0.mode}, batch {r0.batch_size} × {r0.context_length} tokens, "
                        f"{r0.parameters / 1e6:,.1f} M parameters, {r0.device}")
    for col in ("dtype", "step ms (mean ± std)", "tokens/s", "peak MiB", "MFU", "loss"):
        table.add_column(col, justify="left" if col == "dtype" else "right")
    for r in results:
        table.add_row(r.dtype, f"{1e3 * r.mean_s:,.1f} ± {1e3 * r.std_s:,.1f}",
                      f"{r.tokens_per_s:,.0f}", _mib(r.peak_memory_bytes), f"{100 * r.mfu:.1f}%",
                      f"{r.loss:.4f}")
    console.print(table)
    for r in results:
        console.print(f"{r.dtype}: peak {r.peak_flops / 1e12:.3g} TFLOP/s ({r.peak_flops_source}); "
                      f"memory: {r.memory_method}")


def _profile(config, profile_dir: Path, dtypes: list[str], kwargs: dict) -> None:
    from lmforge.bench.profile import profile_model

    for d in dtypes:
        out = profile_dir / d if len(dtypes) > 1 else profile_dir
        r = profile_model(config, out, kwargs["mode"], kwargs["batch_size"],
                          min(kwargs["warmup"], 1), min(kwargs["steps"], 3), d, kwargs["device"],
                          compile=kwargs["compile"])
        console.print(r.table)
        console.print(f"trace: {r.trace_path}" + (
            f", memory snapshot: {r.memory_snapshot_path}" if r.memory_snapshot_path else ""))


@bench_group.command("attention")
@click.option("--seq-lens", default="128,256,512,1024", show_default=True, callback=_int_list)
@click.option("--head-dims", default="16,32,64,128", show_default=True, callback=_int_list)
@click.option("--batch-size", type=COUNT, default=8, show_default=True)
@click.option("--heads", type=COUNT, default=1, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--backends", default="reference,sdpa,flash", show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--steps", type=COUNT, default=5, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, auto.")
@click.option("--json", "json_path", type=PATH, help="Write the results as JSON.")
def bench_attention_command(seq_lens, head_dims, batch_size, heads, dtype, backends, warmup,
                            steps, device, json_path) -> None:
    """Causal attention, ours vs PyTorch SDPA vs our FlashAttention: time and peak memory.

    Forward and backward are timed separately; a cell that runs out of memory shows OOM.

    \b
    Examples:
      lmforge bench attention --seq-lens 128,256,512 --head-dims 32,64
      lmforge bench attention --device cuda --dtype bf16 --seq-lens 1024,4096,16384 --json a.json
    """
    from lmforge.bench.attention import BACKENDS, bench_attention
    from lmforge.fsutil import refuse_overwriting_inputs

    refuse_overwriting_inputs([json_path], [])
    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown or not names:
        raise click.BadParameter(f"{backends!r}: choose from {', '.join(BACKENDS)}",
                                 param_hint="--backends")
    rows = bench_attention(seq_lens, head_dims, batch_size=batch_size, num_heads=heads,
                           dtype=dtype, device=device, backends=names, warmup=warmup, steps=steps)
    _print_attention(rows, names, f"batch {batch_size}, heads {heads}, {dtype}")
    if json_path is not None:
        _write_json(json_path, {"benchmark": "attention", "batch_size": batch_size,
                                "heads": heads, "dtype": dtype,
                                "results": [asdict(r) for r in rows], "machine": _machine()})


def _print_attention(rows, backends: list[str], title: str) -> None:
    """One row per (head dim, seq, backend); `vs sdpa`: SDPA's forward+backward time ÷ this one."""
    table = Table(title=f"causal attention ({title})")
    for col in ("head dim", "seq", "backend", "forward ms", "backward ms", "peak MiB", "vs sdpa"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    total = {(r.backend, r.head_dim, r.seq_len): r.forward_ms + r.backward_ms
             for r in rows if r.status == "ok"}
    order = {b: i for i, b in enumerate(backends)}
    for r in sorted(rows, key=lambda r: (r.head_dim, r.seq_len, order[r.backend])):
        if r.status != "ok":
            table.add_row(str(r.head_dim), str(r.seq_len), r.backend, r.status[:48], "", "", "")
            continue
        sdpa = total.get(("sdpa", r.head_dim, r.seq_len))
        ratio = f"{sdpa / total[(r.backend, r.head_dim, r.seq_len)]:.2f}x" if sdpa else ""
        table.add_row(str(r.head_dim), str(r.seq_len), r.backend, f"{r.forward_ms:,.2f}",
                      f"{r.backward_ms:,.2f}", _mib(r.peak_memory_bytes), ratio)
    console.print(table)
    notes = {(r.backend, r.status) for r in rows if r.status.startswith("unavailable")}
    for backend, note in sorted(notes):
        console.print(f"{backend}: {note}")
