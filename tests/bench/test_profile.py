"""`lmforge.bench.profile`: the Chrome trace exists, parses, and holds the named ranges."""

from __future__ import annotations

import json

from lmforge.bench.profile import module_ranges, profile_model
from lmforge.model import ModelConfig, TransformerLM

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2)


def _ranges(trace_path) -> dict[str, list[tuple[float, float]]]:
    """name → [(start, end)] of the user ranges (record_function) in a Chrome trace."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    out: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        if e.get("cat") == "user_annotation":
            out.setdefault(e["name"], []).append((e["ts"], e["ts"] + e["dur"]))
    return out


def test_trace_has_step_and_module_ranges(tmp_path):
    r = profile_model(CONFIG, tmp_path / "prof", "train-step", batch_size=2, steps=2)
    assert r.trace_path == tmp_path / "prof" / "trace.json" and r.memory_snapshot_path is None
    ranges = _ranges(r.trace_path)
    for name in ("forward", "backward", "optimizer_step"):
        assert len(ranges[name]) == 2, name  # once per profiled step
    assert len(ranges["attention"]) == len(ranges["feed_forward"]) == 2 * 2  # layers × steps
    forward = ranges["forward"][0]
    assert all(forward[0] <= a[0] and a[1] <= forward[1] for a in ranges["attention"][:2])
    assert "aten::mm" in r.table
    for stage in ("attention_scores", "attention_softmax", "attention_weighted_sum"):
        inner = ranges[stage]  # the reference attention's three stages, inside each attention
        assert len(inner) == 2 * 2, stage
        assert all(any(a[0] <= s[0] and s[1] <= a[1] for a in ranges["attention"]) for s in inner)


def test_checkpointing_recomputes_attention_inside_backward(tmp_path):
    r = profile_model(CONFIG, tmp_path, "forward-backward", batch_size=2, steps=1, warmup=0,
                      checkpoint_activations=True)
    ranges = _ranges(r.trace_path)
    assert "optimizer_step" not in ranges
    (b0, b1), = ranges["backward"]
    inside = [a for a in ranges["attention"] if b0 <= a[0] and a[1] <= b1]
    assert len(inside) == 2  # each block's forward rerun once during backward


def test_module_ranges_removes_its_hooks():
    model = TransformerLM.from_config(CONFIG)
    with module_ranges(model, next(model.parameters()).device):
        assert model.layers[0].attn._forward_pre_hooks
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
