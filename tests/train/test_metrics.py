"""metrics.jsonl: torn lines are skipped, resume truncation, the loss plot is written."""

import json

from lmforge.train.metrics import MetricsLogger, plot_losses, read_metrics, truncate_after


def test_log_read_truncate_and_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path)
    for step in (1, 2, 3):
        log.log({"step": step, "train_loss": 1.0 / step, "wall_time": step})
    log.log({"step": 3, "val_loss": 0.5, "wall_time": 3})
    log.close()
    with path.open("a") as f:
        f.write('{"step": 4, "train_lo')  # a kill in the middle of a write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 3]
    truncate_after(path, 2)
    assert read_metrics(path) == [{"step": 1, "train_loss": 1.0, "wall_time": 1},
                                  {"step": 2, "train_loss": 0.5, "wall_time": 2}]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_plot_is_a_png(tmp_path):
    records = [{"step": s, "train_loss": 5 - s / 10, "wall_time": s} for s in range(1, 20)]
    records.append({"step": 19, "val_loss": 3.3, "wall_time": 19})
    out = plot_losses(records, tmp_path / "plots" / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
