"""Worker pools whose processes die with their parent (checked by pid after a SIGKILL), the
parent-watch fallback, `kill_pool`, and the interrupt policy of `raise_interrupt`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest

from lmforge import procutil

REPO = Path(__file__).resolve().parents[1]


def wait_for_children(proc: subprocess.Popen, n: int, timeout: float = 30) -> list[psutil.Process]:
    """The descendants of `proc` once there are at least `n` (fails if `proc` exits first)."""
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        if len(children) >= n:
            return children
        if proc.poll() is not None:
            raise AssertionError(f"the parent exited ({proc.returncode}) before starting workers")
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} child processes after {timeout} s")


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def assert_all_gone(processes: list[psutil.Process], timeout: float = 5) -> None:
    """Every process in `processes` exits within `timeout` seconds (else they are killed)."""
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [p.pid for p in processes if not gone(p)]
    for p in processes:  # do not leave orphans behind a failed test
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not alive, f"processes {alive} outlived their parent"


def run_parent(script: str, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "parent.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(path)], env=env, cwd=tmp_path)


@pytest.mark.parametrize(("pool", "method"), [("process_pool", "spawn"),
                                               ("process_pool", "fork"),
                                               ("multiprocessing_pool", "fork")])
def test_pool_workers_die_when_the_parent_is_killed(tmp_path, pool, method):
    submit = "pool.submit(time.sleep, 60)" if pool == "process_pool" else \
        "pool.apply_async(time.sleep, (60,))"
    proc = run_parent(f"""
        import time
        from lmforge import procutil
        if __name__ == "__main__":
            pool = procutil.{pool}(2, method="{method}")
            jobs = [{submit} for _ in range(4)]
            time.sleep(60)
        """, tmp_path)
    try:
        workers = wait_for_children(proc, 2)
        time.sleep(0.5)  # let the workers get past their initializer (and into the task)
        workers = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.kill()
        proc.wait()
    assert_all_gone(workers)


def test_a_worker_whose_parent_already_died_dies_at_once():
    """`die_with_parent` checks the parent after the prctl: it may have died before it."""
    proc = subprocess.run([sys.executable, "-c", "from lmforge.procutil import die_with_parent\n"
                           "die_with_parent(1)  # not our parent: as if it had died\n"
                           "print('still running')"], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == ""


def test_parent_watch_fallback_kills_the_orphan(tmp_path):
    proc = run_parent("""
        import os, subprocess, sys, time
        child = ("import os, time\\nfrom lmforge.procutil import watch_parent\\n"
                 f"watch_parent({os.getpid()}, poll_s=0.05)\\ntime.sleep(60)")
        subprocess.Popen([sys.executable, "-c", child])
        time.sleep(60)
        """, tmp_path)
    try:
        (child,) = wait_for_children(proc, 1)
        time.sleep(0.5)  # the child is past its imports and watching
    finally:
        proc.kill()
        proc.wait()
    assert_all_gone([child])


def test_kill_pool_stops_running_tasks_and_their_workers():
    pool = procutil.process_pool(2)
    futures = [pool.submit(time.sleep, 60) for _ in range(3)]
    while not all(f.running() for f in futures[:2]):
        time.sleep(0.02)
    workers = [psutil.Process(pid) for pid in pool._processes]  # the executor's own record
    procutil.kill_pool(pool)
    assert all(gone(w) for w in workers)
    for future in futures:
        with pytest.raises((BrokenProcessPool, CancelledError)):
            future.result(timeout=5)


def test_kill_pool_when_the_interrupt_came_while_its_manager_thread_was_starting(monkeypatch):
    """A SIGTERM can land inside ``Thread.start()`` of the pool's manager thread, before the new
    thread marks itself started; shutting the pool down then must not fail with "cannot join
    thread before it is started" (once seen as a flaky `test_sigterm_stops_encode_like_ctrl_c`)."""
    real_start = threading.Thread.start

    def start_interrupted(self):
        if type(self).__name__ == "_ExecutorManagerThread":  # the pool's, not the Timer's
            threading.Timer(0.2, real_start, args=(self,)).start()  # it does start, later
            raise KeyboardInterrupt
        real_start(self)

    pool = procutil.process_pool(2)
    monkeypatch.setattr(threading.Thread, "start", start_interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.submit(time.sleep, 60)
    monkeypatch.undo()
    workers = [psutil.Process(pid) for pid in pool._processes]
    procutil.kill_pool(pool)
    assert all(gone(w) for w in workers)


def test_unsupported_start_method_is_a_clear_error():
    with pytest.raises(ValueError, match="start method must be one of"):
        procutil.process_pool(2, method="forkserver")


def test_pid_alive():
    assert procutil.pid_alive(os.getpid())
    assert not procutil.pid_alive(0) and not procutil.pid_alive(-5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert not procutil.pid_alive(int(dead.stdout))


def test_interrupt_policy_first_raises_then_sigterm_is_ignored_and_sigint_exits(tmp_path):
    """The first signal raises KeyboardInterrupt; during the cleanup a repeated SIGTERM is
    ignored and a SIGINT exits at once with status 130 and one line."""
    script = """
        import os, signal
        from lmforge import procutil
        with procutil.interrupt_handlers():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except KeyboardInterrupt:
                print("cleaning up", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                print("still cleaning up", flush=True)
                os.kill(os.getpid(), signal.SIGINT)
                print("not reached", flush=True)
        """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 130
    assert proc.stdout == "cleaning up\nstill cleaning up\n"
    assert proc.stderr == "interrupted\n"


def test_interrupt_handlers_restore_the_previous_ones():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with procutil.interrupt_handlers():
        assert signal.getsignal(signal.SIGTERM) is procutil.raise_interrupt
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
