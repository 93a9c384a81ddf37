"""µP in practice: the coordinate check and the learning-rate transfer sweep (Tensor Programs V).

µP itself is a model option (`ModelConfig.parametrization = "mup"`, `mup_base_width`): with
width multiplier m = d_model / mup_base_width it keeps SP's init for the embedding and the
hidden matrices (variance ∝ 1/fan_in), initialises the output layer as SP does at the base
width and multiplies the logits by 1/m, scales attention scores by 1/head_dim (√base_head_dim /
head_dim) instead of 1/√head_dim, and gives Adam a learning rate lr/m on hidden matrices (lr ·
base_fan_in / fan_in) with weight decay ·m, lr on everything else (`TransformerLM.lr_scales`,
`lmforge.train.step.make_optimizer`). At m = 1 it is SP exactly.

Two experiments show what that buys (Yang et al. 2022, Fig. 1 and §5):

- `coordinate_check(widths, parametrization)`: train models of several widths a few Adam steps
  on one fixed batch and record the mean |activation| per coordinate of the embedding output,
  each block's output and the logits after each step. Under µP these stay O(1) as width grows;
  under SP the updates of a matrix with fan_in n move its outputs by ~lr·n, so the blocks'
  outputs and the logits grow with width.
- `lr_transfer_sweep(widths, lrs, parametrization, steps=, data=)`: final validation loss per
  (width, lr); under µP the best lr stays put across widths, under SP it drifts down as width
  grows (the wider model needs a smaller lr).

Both train with the ONE training step (`lmforge.train.step.TrainStep.for_model`: AdamW groups,
clipping, the per-layer µP rates) and plain `TransformerLM`s of the width's shape.
`write_mup_study(out_dir)` (also `python -m lmforge.scaling.mup --out DIR`) runs both for SP
and µP and writes `coord_check.png`, `lr_transfer.png` and `mup_study.json`.

>>> check = coordinate_check((16, 32), "mup", steps=1, num_layers=1)
>>> check.scale.shape  # (widths, steps + 1, sites): embedding, block 0, logits
(2, 2, 3)
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import OptimConfig, RunConfig, TrainConfig
from lmforge.errors import InvalidArgument
from lmforge.fsutil import atomic_write_text
from lmforge.model import ModelConfig, TransformerLM
from lmforge.train.data import get_batch
from lmforge.train.optim import get_lr_cosine_schedule
from lmforge.train.step import NonFiniteStep, TrainStep

PARAMETRIZATIONS = ("sp", "mup")
STUDY_LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2, 1.28e-1)  # 2× grid for the study


@dataclass(frozen=True)
class Shape:
    """What the models of a µP experiment share; only d_model varies (at fixed num_heads, so
    head_dim grows with width, as `ModelConfig.attention_scale` assumes)."""

    vocab_size: int = 256  # byte-level tokens by default
    context_length: int = 32
    num_layers: int = 2
    num_heads: int = 4

    def config(self, width: int, parametrization: str, base_width: int) -> ModelConfig:
        mup = parametrization == "mup"
        return ModelConfig(self.vocab_size, self.context_length, width, self.num_layers,
                           self.num_heads, parametrization=parametrization,
                           mup_base_width=base_width if mup else None)


def _check(widths: Sequence[int], parametrization: str) -> tuple[int, ...]:
    if parametrization not in PARAMETRIZATIONS:
        raise InvalidArgument(
            f"parametrization {parametrization!r} is not one of {', '.join(PARAMETRIZATIONS)}")
    if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise InvalidArgument(f"widths must be at least two positive integers, got {widths!r}")
    return tuple(sorted(widths))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny models on one CPU thread: their matrices are too small for a second thread to
    pay for its synchronisation (and on a loaded machine spinning threads cost far more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_step(model: TransformerLM, lr: float, grad_clip: float) -> TrainStep:
    optim = OptimConfig(lr=lr, weight_decay=0.0, grad_clip=grad_clip)
    config = TrainConfig(model=model.config, optim=optim, train=RunConfig(dtype="fp32"))
    return TrainStep.for_model(model, config, torch.device("cpu"))


@dataclass(frozen=True)
class CoordCheck:
    """Mean |activation| per coordinate: `scale[w, t, s]` for width `widths[w]` after `t`
    optimizer steps (t = 0: at init) at site `sites[s]` ("embedding", "block 0", ...,
    "logits"), averaged over the fixed batch's tokens and the site's coordinates; `change`
    the same of |activation_t - activation_0|, the part training added (what µP keeps O(1)
    while SP's grows ∝ width; µP's logits at init shrink as 1/√m, by design)."""

    parametrization: str
    widths: tuple[int, ...]
    sites: tuple[str, ...]
    scale: np.ndarray  # (len(widths), steps + 1, len(sites))
    change: np.ndarray  # (len(widths), steps + 1, len(sites)); change[:, 0] = 0
    lr: float

    def growth(self, site: str = "logits", step: int = -1, of: str = "scale") -> float:
        """`of` ("scale" or "change") at the widest model / at the narrowest, at `site` after
        `step` steps."""
        values, s = getattr(self, of), self.sites.index(site)
        return float(values[-1, step, s] / values[0, step, s])

    def to_dict(self) -> dict[str, Any]:
        return {"parametrization": self.parametrization, "widths": list(self.widths),
                "sites": list(self.sites), "lr": self.lr, "scale": self.scale.tolist(),
                "change": self.change.tolist()}


def coordinate_check(
    widths: Sequence[int], parametrization: str, *, steps: int = 5, lr: float = 1e-2,
    seed: int = 0, base_width: int | None = None, shape: Shape | None = None,
    batch_size: int = 8, num_layers: int | None = None,
) -> CoordCheck:
    """Train one model per width `steps` Adam steps at `lr` on one fixed random batch and
    record the activation scale after each step (see `CoordCheck`). `base_width` (µP; default
    the narrowest width, so that model is the same under SP and µP). Same seed and batch for
    every width; no clipping and no weight decay, so nothing masks the raw update size."""
    widths = _check(widths, parametrization)
    shape = shape or Shape()
    if num_layers is not None:
        shape = Shape(shape.vocab_size, shape.context_length, num_layers, shape.num_heads)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, shape.vocab_size, (2, batch_size, shape.context_length), generator=g)
    sites = ("embedding", *(f"block {i}" for i in range(shape.num_layers)), "logits")
    scale, change = np.zeros((2, len(widths), steps + 1, len(sites)))
    with _one_thread():
        for w, width in enumerate(widths):
            _record(scale[w], change[w], shape.config(width, parametrization,
                                                      base_width or widths[0]),
                    sites, (x, y), lr, seed)
    return CoordCheck(parametrization, widths, sites, scale, change, lr)


def _record(scale: np.ndarray, change: np.ndarray, config: ModelConfig, sites: tuple[str, ...],
            batch: tuple[torch.Tensor, torch.Tensor], lr: float, seed: int) -> None:
    """One width of `coordinate_check`: fill scale, change (steps + 1, sites)."""
    x, y = batch
    torch.manual_seed(seed)
    model = TransformerLM.from_config(config)
    seen: dict[str, torch.Tensor] = {}
    modules = [model.token_embeddings, *model.layers, model.lm_head]
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().clone()))
        for name, m in zip(sites, modules, strict=True)]
    step = _train_step(model, lr, grad_clip=0.0)
    try:
        for t in range(len(scale)):
            with torch.no_grad():
                model(x)
            if t == 0:
                initial = dict(seen)
            scale[t] = [seen[s].abs().mean().item() for s in sites]
            change[t] = [(seen[s] - initial[s]).abs().mean().item() for s in sites]
            if t < len(scale) - 1:
                step([(x, y)])
    finally:
        for h in hooks:
            h.remove()


@dataclass(frozen=True)
class TransferSweep:
    """Final validation loss `loss[w, i]` (nats/token; inf where training diverged) of width
    `widths[w]` trained at peak learning rate `lrs[i]`."""

    parametrization: str
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    loss: np.ndarray  # (len(widths), len(lrs))
    steps: int
    seconds: float  # wall time of the whole sweep

    def best_index(self) -> list[int]:
        """Per width, the index into `lrs` of the lowest loss."""
        return [int(np.argmin(row)) for row in self.loss]

    def best_lr(self) -> dict[int, float]:
        """Per width, the learning rate with the lowest final loss."""
        return {w: self.lrs[i] for w, i in zip(self.widths, self.best_index(), strict=True)}

    def to_dict(self) -> dict[str, Any]:
        loss = [[None if not math.isfinite(v) else v for v in row] for row in self.loss.tolist()]
        return {"parametrization": self.parametrization, "widths": list(self.widths),
                "lrs": list(self.lrs), "loss": loss, "steps": self.steps,
                "best_lr": {str(w): lr for w, lr in self.best_lr().items()},
                "seconds": round(self.seconds, 2)}


def lr_transfer_sweep(
    widths: Sequence[int], lrs: Sequence[float], parametrization: str, *, steps: int,
    data: np.ndarray, seed: int = 0, base_width: int | None = None, shape: Shape | None = None,
    batch_size: int = 8, eval_batches: int = 4, grad_clip: float = 1.0,
) -> TransferSweep:
    """Train every (width, lr) for `steps` steps (linear warm-up over the first 10%, cosine to
    lr/10) on random windows of the first 90% of `data` (1-D token ids < shape.vocab_size),
    and report the mean loss on `eval_batches` fixed windows of the last 10%. Every run sees
    the same batches and starts from the same seed. A run whose loss turns NaN/inf (a refused
    step, `NonFiniteStep`) scores inf."""
    widths = _check(widths, parametrization)
    shape = shape or Shape()
    data = np.asarray(data)
    if data.ndim != 1 or len(data) < 20 * (shape.context_length + 1):
        raise InvalidArgument(
            f"data must be a 1-D token array of at least {20 * (shape.context_length + 1)} "
            f"tokens (got shape {data.shape}); pass more text")
    if not lrs or any(not lr > 0 for lr in lrs):
        raise InvalidArgument(f"lrs must be positive learning rates, got {lrs!r}")
    split = int(0.9 * len(data))
    train, held_out = data[:split], data[split:]
    rng = np.random.default_rng(seed)
    batches = [get_batch(train, batch_size, shape.context_length, "cpu", rng=rng)
               for _ in range(steps)]
    val = [get_batch(held_out, batch_size, shape.context_length, "cpu", rng=rng)
           for _ in range(eval_batches)]
    loss = np.full((len(widths), len(lrs)), np.inf)
    start = time.perf_counter()
    with _one_thread():
        for w, width in enumerate(widths):
            config = shape.config(width, parametrization, base_width or widths[0])
            for i, lr in enumerate(lrs):
                loss[w, i] = _final_loss(config, lr, batches, val, grad_clip, seed)
    return TransferSweep(parametrization, widths, tuple(lrs), loss, steps,
                         time.perf_counter() - start)


def _final_loss(config: ModelConfig, lr: float, batches: list, val: list, grad_clip: float,
                seed: int) -> float:
    """One run of `lr_transfer_sweep`: mean validation loss after training, inf if it diverged."""
    torch.manual_seed(seed)
    model = TransformerLM.from_config(config)
    step = _train_step(model, lr, grad_clip)
    steps, warmup = len(batches), max(1, len(batches) // 10)
    try:
        for t, b in enumerate(batches):
            step([b], lr=get_lr_cosine_schedule(t + 1, lr, lr / 10, warmup, steps))
    except NonFiniteStep:
        return math.inf
    with torch.no_grad():
        final = float(np.mean([step.loss_fn(b).item() for b in val]))
    return final if math.isfinite(final) else math.inf


def plot_coordinate_check(checks: CoordCheck | Sequence[CoordCheck], path: str | Path) -> Path:
    """One row per check (e.g. SP above µP), one panel per site: mean |activation| against
    width (log-log), one line per step. Flat lines are what µP promises."""
    from lmforge.train.metrics import save_figure

    plt = _pyplot()
    checks = [checks] if isinstance(checks, CoordCheck) else list(checks)
    sites = checks[0].sites
    fig, axes = plt.subplots(len(checks), len(sites), figsize=(3.0 * len(sites),
                             2.6 * len(checks)), squeeze=False, sharex=True, sharey="col")
    for row, check in zip(axes, checks, strict=True):
        steps = check.scale.shape[1]
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, steps))
        for s, (ax, site) in enumerate(zip(row, check.sites, strict=True)):
            for t in range(steps):
                ax.plot(check.widths, check.scale[:, t, s], "o-", ms=3, color=colors[t],
                        label=f"step {t}")
            ax.set(xscale="log", yscale="log", title=f"{check.parametrization}: {site}")
            ax.set_xticks(check.widths, [str(w) for w in check.widths])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.grid(alpha=0.3)
        row[0].set_ylabel("mean |activation|")
    for ax in axes[-1]:
        ax.set_xlabel("width (d_model)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_lr_transfer(sweeps: TransferSweep | Sequence[TransferSweep], path: str | Path) -> Path:
    """One panel per sweep: final loss against learning rate, one line per width, the best lr
    of each width marked. Under µP the minima line up vertically."""
    from lmforge.train.metrics import save_figure

    plt = _pyplot()
    sweeps = [sweeps] if isinstance(sweeps, TransferSweep) else list(sweeps)
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.6 * len(sweeps), 3.6), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        colors = plt.get_cmap("plasma")(np.linspace(0, 0.85, len(sweep.widths)))
        finite = sweep.loss[np.isfinite(sweep.loss)]
        for w, (width, best) in enumerate(zip(sweep.widths, sweep.best_index(), strict=True)):
            ax.plot(sweep.lrs, sweep.loss[w], "o-", ms=3, color=colors[w], label=f"d={width}")
            ax.plot(sweep.lrs[best], sweep.loss[w, best], "*", ms=12, color=colors[w])
        if finite.size:
            ax.set_ylim(finite.min() - 0.05, min(finite.max(), finite.min() + 1.5) + 0.05)
        ax.set(xscale="log", xlabel="peak learning rate", ylabel="final validation loss",
               title=f"{sweep.parametrization}: {sweep.steps} steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def byte_tokens(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The UTF-8 bytes of a text file as token ids (vocab 256: the byte-level fallback)."""
    raw = Path(path).read_bytes()
    return np.frombuffer(raw[:limit], dtype=np.uint8).astype(np.int64)


def write_mup_study(
    out_dir: str | Path, *, data: np.ndarray, widths: Sequence[int] = (32, 64, 128, 256),
    lrs: Sequence[float] = STUDY_LRS, steps: int = 200,
    coord_steps: int = 10, coord_lr: float = 3e-2, shape: Shape | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run the coordinate check and the transfer sweep under SP and µP; write
    `coord_check.png`, `lr_transfer.png` and `mup_study.json` (everything, with timings) into
    `out_dir` and return the JSON's content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    checks = [coordinate_check(widths, p, steps=coord_steps, lr=coord_lr, shape=shape)
              for p in PARAMETRIZATIONS]
    coord_seconds = time.perf_counter() - t0
    sweeps = [lr_transfer_sweep(widths, lrs, p, steps=steps, data=data, shape=shape,
                                batch_size=batch_size) for p in PARAMETRIZATIONS]
    plot_coordinate_check(checks, out / "coord_check.png")
    plot_lr_transfer(sweeps, out / "lr_transfer.png")
    study = {"coordinate_check": [c.to_dict() for c in checks],
             "coord_check_seconds": round(coord_seconds, 2),
             "lr_transfer": [s.to_dict() for s in sweeps],
             "logits_growth": {c.parametrization: c.growth() for c in checks}}
    atomic_write_text(out / "mup_study.json", json.dumps(study, indent=2) + "\n")
    return study


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="µP coordinate check and lr-transfer sweep")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--data", default="data/small_en.txt", help="text file (byte tokens)")
    parser.add_argument("--tokens", type=int, default=400_000, help="bytes of --data to use")
    parser.add_argument("--steps", type=int, default=200, help="steps per sweep run")
    parser.add_argument("--widths", default="32,64,128,256", help="comma-separated d_model")
    args = parser.parse_args()
    result = write_mup_study(args.out, data=byte_tokens(args.data, args.tokens),
                             widths=[int(w) for w in args.widths.split(",")], steps=args.steps)
    print(json.dumps({"best_lr": {s["parametrization"]: s["best_lr"]
                                  for s in result["lr_transfer"]},
                      "seconds": {s["parametrization"]: s["seconds"]
                                  for s in result["lr_transfer"]},
                      "logits_growth": result["logits_growth"]}, indent=2))
