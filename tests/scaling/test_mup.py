"""µP's two promises at CPU scale: the coordinate check and learning-rate transfer.

References: the narrowest model, which is the same under SP and µP (m = 1), so both
experiments must give it identical numbers; Tensor Programs V's predictions (Yang et al.
2022, Fig. 1/5): under SP an Adam update of a fan_in-n matrix moves its output by ~lr·n, so
hidden activations grow ∝ width and the best lr falls as width grows; under µP both stay put.

Hand-checked thresholds (widths 16…128, 8×, seed 0; see docs/scaling.md). Coordinate check,
10 Adam steps at lr 3e-2, widest/narrowest mean |activation|: SP blocks 6.8× and 7.5×
(≈ the 8× width ratio), logits 2.1×; µP blocks 1.10× and 1.18×, logits 0.65× (µP's logits
at init shrink as 1/√m by design: a base-width init times the 1/m multiplier). Transfer sweep,
30 steps, lr 4e-3·2^k: best-lr index per width SP [4, 3, 2, 1], µP [4, 4, 3, 4].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.errors import InvalidArgument
from lmforge.scaling.mup import (
    byte_tokens,
    coordinate_check,
    lr_transfer_sweep,
    plot_coordinate_check,
    plot_lr_transfer,
    write_mup_study,
)

CORPUS = Path(__file__).resolve().parents[2] / "data" / "small_en.txt"
WIDTHS = (16, 32, 64, 128)


@pytest.fixture(scope="module")
def checks():
    return {p: coordinate_check(WIDTHS, p, steps=10, lr=3e-2) for p in ("sp", "mup")}


@pytest.fixture(scope="module")
def sweeps():
    data = byte_tokens(CORPUS, 200_000)
    lrs = [4e-3 * 2**k for k in range(6)]
    return {p: lr_transfer_sweep(WIDTHS, lrs, p, steps=30, data=data) for p in ("sp", "mup")}


def test_coordinate_check_is_flat_under_mup_and_grows_under_sp(checks):
    sp, mup = checks["sp"], checks["mup"]
    assert np.array_equal(sp.scale[0], mup.scale[0])  # the base width is the same model
    assert np.allclose(sp.scale[:, 0, 0], sp.scale[0, 0, 0], rtol=0.05)  # embeddings: N(0, 1)
    for block in ("block 0", "block 1"):
        assert sp.growth(block) > 3.0  # ∝ width (8×): SP's updates grow with fan_in
        assert 0.8 < mup.growth(block) < 1.5
        assert sp.growth(block, of="change") > 5 * mup.growth(block, of="change")
    assert sp.growth("logits") > 1.5 and mup.growth("logits") < 1.0
    assert mup.growth("logits") > 0.5  # no collapse either: training moved them Θ(1)


def test_best_learning_rate_stays_put_under_mup_and_moves_under_sp(sweeps):
    sp, mup = sweeps["sp"], sweeps["mup"]
    assert np.array_equal(sp.loss[0], mup.loss[0])  # m = 1: identical runs
    assert np.isfinite(mup.loss).all()
    assert max(mup.best_index()) - min(mup.best_index()) <= 1  # within one grid step (2×)
    first, *_, last = sp.best_index()
    assert last <= first - 2  # the widest SP model wants ≥ 4× less
    assert sp.best_lr()[128] < mup.best_lr()[128]


def test_plots_and_json(tmp_path, checks, sweeps):
    for path in (plot_coordinate_check(list(checks.values()), tmp_path / "c.png"),
                 plot_lr_transfer(list(sweeps.values()), tmp_path / "t.png"),
                 plot_lr_transfer(sweeps["mup"], tmp_path / "one.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(json.dumps(sweeps["sp"].to_dict()))
    assert doc["best_lr"]["16"] == sweeps["sp"].best_lr()[16]


def test_study_writes_figures_and_json(tmp_path):
    data = byte_tokens(CORPUS, 20_000)
    study = write_mup_study(tmp_path, data=data, widths=(16, 32), lrs=(1e-2, 3e-2), steps=2,
                            coord_steps=1)
    assert {p.name for p in tmp_path.iterdir()} == {"coord_check.png", "lr_transfer.png",
                                                    "mup_study.json"}
    assert json.loads((tmp_path / "mup_study.json").read_text()) == study


@pytest.mark.parametrize("call, message", [
    (lambda: coordinate_check((16, 32), "ntk"), "not one of sp, mup"),
    (lambda: coordinate_check((16,), "mup"), "at least two"),
    (lambda: lr_transfer_sweep((16, 32), [1e-2], "mup", steps=1, data=np.zeros(50, int)),
     "at least"),
    (lambda: lr_transfer_sweep((16, 32), [0.0], "mup", steps=1, data=np.zeros(9000, int)),
     "positive learning rates"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(InvalidArgument, match=message):
        call()
