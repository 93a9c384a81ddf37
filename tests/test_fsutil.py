"""Saved artifacts get umask permissions, not mkstemp's or safetensors' private 0600."""

import os
import stat

import pytest
import torch

from lmforge.fsutil import atomic_writer
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import save_run_checkpoint
from lmforge.train.optim import AdamW


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_tokenizer_dir_and_checkpoint_weights_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
        tok.save(tmp_path / "tok")
        assert _mode(tmp_path / "tok") == 0o755
        assert {_mode(p) for p in (tmp_path / "tok").iterdir()} == {0o644}
        w = torch.nn.Parameter(torch.ones(3))
        module = torch.nn.Module()
        module.w = w
        ckpt = save_run_checkpoint(tmp_path, 1, module, AdamW([w]), {})
        assert _mode(ckpt / "model.safetensors") == 0o644
    finally:
        os.umask(old)


def test_atomic_writer_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "shard.txt"
    with atomic_writer(path, "w", encoding="utf-8") as f:
        f.write("first\n")
    assert path.read_text() == "first\n"
    with pytest.raises(KeyboardInterrupt), atomic_writer(path, "w", encoding="utf-8") as f:
        f.write("half of a second vers")
        raise KeyboardInterrupt
    assert path.read_text() == "first\n"
    assert [p.name for p in path.parent.iterdir()] == ["shard.txt"]  # no temp file left behind
    with pytest.raises(ValueError, match="mode"), atomic_writer(path, "a"):
        pass
