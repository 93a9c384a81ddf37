"""Saved artifacts get umask permissions, not mkstemp's or safetensors' private 0600; temp files
and directories name their writer's pid, and those of dead writers are removed by the next run;
files and directories are replaced only by complete new ones."""

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge import fsutil
from lmforge.fsutil import (
    DirectWriter,
    SyncBehind,
    atomic_directory,
    atomic_writer,
    remove_stale_temps,
    replace_dir,
    scratch_file,
    start_writeback,
    temp_prefix,
)
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


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)  # exited and reaped: no process has this pid (until it is reused)


def test_atomic_writer_temp_name_carries_the_writer_pid(tmp_path):
    with atomic_writer(tmp_path / "shard.txt", "w", encoding="utf-8") as f:
        f.write("x")
        (temp,) = [p.name for p in tmp_path.iterdir()]
    assert temp.startswith(f".shard.txt.{os.getpid()}.") and temp.endswith(".tmp")
    assert temp.startswith(temp_prefix(tmp_path / "shard.txt"))


def test_scratch_file_is_removed_on_success_and_on_error(tmp_path):
    with scratch_file(tmp_path / "tokens.npy") as scratch:
        scratch.write_bytes(b"ids")
        assert scratch.name.startswith(temp_prefix(tmp_path / "tokens.npy"))
        assert scratch.name.endswith(".tmp")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), scratch_file(tmp_path / "tokens.npy") as scratch:
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temps_removes_only_temps_of_dead_writers(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    names = [f".out.npy.{dead}.ab12cd34.tmp", f".out.npy.json.{dead}.k_9x0abc.tmp",
             f".out.npy.{alive}.ab12cd34.tmp",  # this process is writing it
             f".other.npy.{dead}.ab12cd34.tmp",  # not named in `names` below
             ".out.npy.ab12cd34.tmp", f"out.npy.{dead}.ab12cd34.tmp", "out.npy", ".hidden"]
    for name in names:
        (tmp_path / name).write_text("partial")
    (tmp_path / f".tok.{dead}.zz.tmp").mkdir()
    (tmp_path / f".tok.{dead}.zz.tmp" / "vocab.json").write_text("{}")
    removed = remove_stale_temps(tmp_path, names=["out.npy", "out.npy.json", "tok"])
    assert sorted(p.name for p in removed) == sorted(
        [names[0], names[1], f".tok.{dead}.zz.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    assert [p.name for p in remove_stale_temps(tmp_path)] == [names[3]]  # every name
    assert remove_stale_temps(tmp_path / "missing") == []


def test_temp_of_a_killed_writer_is_removed_by_the_next_run(tmp_path):
    """A writer SIGKILLed mid-write leaves its temp; `remove_stale_temps` then removes it."""
    script = ("import sys, time\nfrom lmforge.fsutil import atomic_writer\n"
              "with atomic_writer(sys.argv[1], 'w') as f:\n"
              "    f.write('half'); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out.txt")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
        (temp,) = tmp_path.iterdir()
        assert remove_stale_temps(tmp_path) == []  # its writer is alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert temp.exists()  # no `except` runs on SIGKILL
    assert remove_stale_temps(tmp_path, names=["out.txt"]) == [temp]
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "tok"
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(temp_prefix(target))
        assert tmp.name.endswith(".tmp")
        (tmp / "a.txt").write_text("first")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("half of a second version")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with atomic_directory(target) as tmp:
        (tmp / "c.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temp or old copy left


def test_atomic_directory_first_removes_temps_of_dead_writers(tmp_path):
    stale, live = (tmp_path / f".tok.{pid}.ab_9.tmp" for pid in (_dead_pid(), os.getpid()))
    for d in (stale, live):
        d.mkdir()
        (d / "vocab.json").write_text("{}")
    with atomic_directory(tmp_path / "tok") as tmp:
        (tmp / "vocab.json").write_text("{}")
    assert not stale.exists() and live.is_dir() and (tmp_path / "tok" / "vocab.json").is_file()


def test_replace_dir_keeps_the_old_directory_when_the_swap_is_cut(tmp_path, monkeypatch):
    old, new = tmp_path / "ckpt", tmp_path / "new"
    for d, text in ((old, "old"), (new, "new")):
        d.mkdir()
        (d / "w").write_text(text)
    replace = os.replace
    calls = []

    def cut_after_the_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", cut_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(new, old)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("ckpt.old-")]
    assert (aside / "w").read_text() == "old"  # still there, and not a removable temp
    assert remove_stale_temps(tmp_path) == []
    monkeypatch.setattr(os, "replace", replace)
    replace_dir(new, old)
    assert (old / "w").read_text() == "new"


def test_a_plot_cut_short_leaves_the_old_one_and_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from lmforge.train.metrics import plot_losses

    records = [{"step": s, "train_loss": 5.0 - s, "wall_time": s} for s in range(3)]
    out = plot_losses(records, tmp_path / "loss.png")
    before = out.read_bytes()

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") if isinstance(fname, str | os.PathLike) else fname as f:
            f.write(b"\x89PNG half")
        raise OSError("the renderer failed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="renderer"):
        plot_losses(records, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_sync_behind_syncs_what_was_written_and_waits_on_close(tmp_path, monkeypatch):
    synced = []  # (file size at the sync, thread name)
    real = os.fdatasync

    def fdatasync(fd):
        synced.append((os.fstat(fd).st_size, threading.current_thread().name))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    block = bytes(range(256)) * 16  # 4 KiB
    with atomic_writer(tmp_path / "ids.bin", "wb", fsync=True) as f:
        behind = SyncBehind(f, every=3 * len(block))
        for _ in range(20):
            f.write(block)
            behind.wrote(len(block))
            if behind.thread:
                behind.thread.join()  # deterministic: each sync done before the next write
        behind.close()
        assert behind.thread is None
    # A sync after every third block, on the helper thread, seeing all the data written so far
    # (the Python buffer was flushed first).
    assert synced == [(3 * k * len(block), "lmforge-sync-behind") for k in range(1, 7)]
    assert (tmp_path / "ids.bin").read_bytes() == block * 20


def test_sync_behind_raises_the_sync_error_and_the_file_is_not_replaced(tmp_path, monkeypatch):
    """A write-back error is reported to one sync call only: the helper's must not be lost."""
    def failing(fd):
        raise OSError(5, "Input/output error")

    (tmp_path / "ids.bin").write_bytes(b"old")
    monkeypatch.setattr(os, "fdatasync", failing)
    with (pytest.raises(OSError, match="Input/output"),
          atomic_writer(tmp_path / "ids.bin", "wb", fsync=True) as f):
        behind = SyncBehind(f, every=1)
        f.write(b"new ids")
        behind.wrote(7)
        behind.close()
    assert (tmp_path / "ids.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ids.bin"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_start_writeback_calls_the_kernel(tmp_path):
    path = tmp_path / "ids.bin"
    with open(path, "wb") as f:
        f.write(b"ids" * 1000)
        f.flush()
        assert start_writeback(f.fileno()) is True
        os.fsync(f.fileno())
    assert path.read_bytes() == b"ids" * 1000
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as e:  # a closed descriptor: the real call's EBADF, not a stub
        start_writeback(fd)
    assert e.value.errno == errno.EBADF


def test_sync_behind_starts_the_writeback_of_flushed_data(tmp_path, monkeypatch):
    started = []  # file size when each write-back started

    monkeypatch.setattr(fsutil, "start_writeback",
                        lambda fd: started.append(os.fstat(fd).st_size) or True)
    block = b"x" * 1000
    with atomic_writer(tmp_path / "ids.bin", "wb", fsync=True) as f:
        behind = SyncBehind(f, every=1 << 30, writeback=2500)
        for _ in range(10):
            f.write(block)
            behind.wrote(len(block))
        behind.close()
    # every third block (2,500 bytes unsent), after the Python buffer was flushed to the file
    assert started == [3000, 6000, 9000]
    assert (tmp_path / "ids.bin").read_bytes() == block * 10


def _probe_direct(directory) -> bool:
    """Whether this file system takes O_DIRECT (tmpfs does not)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        os.close(os.open(directory / ".probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        return False
    finally:
        (directory / ".probe").unlink(missing_ok=True)
    return True


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
def test_direct_writer_writes_the_same_bytes_as_a_plain_write(tmp_path, where):
    directory = tmp_path if where == "tmp_path" else Path(where)
    if not directory.is_dir():
        pytest.skip(f"{where} does not exist here")
    rng = np.random.default_rng(0)
    pieces = [rng.bytes(int(n)) for n in rng.integers(0, 20_000, 60)] + [b"", b"x"]
    path = directory / f"direct-{os.getpid()}.bin"
    try:
        with atomic_writer(path, "wb", fsync=True) as f:
            out = DirectWriter(f, block=16384)  # many full blocks, and a partial one at the end
            for p in pieces:
                out.write(memoryview(p) if len(p) % 2 else p)
            was_direct = out.direct
            out.close()
            assert f.tell() == sum(map(len, pieces))
            f.seek(0)
            f.write(b"HEAD")  # the header rewrite encode_file does, through the page cache
        assert path.read_bytes() == b"HEAD" + b"".join(pieces)[4:]
        # O_DIRECT was used where the file system takes it, and not on tmpfs
        assert was_direct == _probe_direct(directory)
    finally:
        path.unlink(missing_ok=True)


def test_direct_writer_refuses_an_unaligned_start(tmp_path):
    with open(tmp_path / "f.bin", "wb") as f:
        f.write(b"123")
        with pytest.raises(ValueError, match="multiples of the page size"):
            DirectWriter(f)
