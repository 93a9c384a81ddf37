"""The LSH S-curve: how likely MinHash-LSH is to propose a pair, as a function of its Jaccard.

With b bands of r rows, a pair of Jaccard s shares at least one band with probability
P(s) = 1 − (1 − s^r)^b (`lmforge.data.minhash.lsh_candidate_probability`). The curve is an "S"
that rises steepest near s* = (1/b)^(1/r) (`lsh_threshold`): pairs well above s* are almost
always found, pairs well below almost never (Leskovec, Rajaraman & Ullman, *Mining of Massive
Datasets*, §3.4). Plotting it for the chosen bands × rows shows what recall to expect at the
verification threshold, e.g. 14 × 8: P(0.8) ≈ 0.92, P(0.9) ≈ 0.9996.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lmforge.data.minhash import lsh_candidate_probability, lsh_threshold
from lmforge.fsutil import atomic_writer


def plot_lsh_s_curve(num_bands: int, rows: int, path: str | os.PathLike, *,
                     jaccard_threshold: float | None = None) -> Path:
    """Save a PNG of P(candidate) vs Jaccard for `num_bands` × `rows`, s* = (1/b)^(1/r) marked.

    `jaccard_threshold` (optional) also marks the verification threshold and P at it.
    Returns the path written (atomically).
    """
    if num_bands < 1 or rows < 1:
        raise ValueError(f"need num_bands >= 1 and rows >= 1, got {num_bands} and {rows}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.linspace(0.0, 1.0, 501)
    knee = lsh_threshold(num_bands, rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(s, lsh_candidate_probability(s, num_bands, rows), lw=2,
            label=f"1 − (1 − s^{rows})^{num_bands}")
    ax.axvline(knee, ls="--", color="C1", label=f"(1/b)^(1/r) = {knee:.3f}")
    if jaccard_threshold is not None:
        p = lsh_candidate_probability(jaccard_threshold, num_bands, rows)
        ax.axvline(jaccard_threshold, ls=":", color="C2",
                   label=f"threshold {jaccard_threshold:g}: P = {p:.3f}")
    ax.set_xlabel("Jaccard similarity s of a pair")
    ax.set_ylabel("P(pair is an LSH candidate)")
    ax.set_title(f"MinHash-LSH S-curve: {num_bands} bands × {rows} rows "
                 f"({num_bands * rows} hashes)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
