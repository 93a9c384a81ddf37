"""Worker processes that die with their parent, and how the CLI treats Ctrl-C and SIGTERM.

Every pool of worker processes in lmforge starts through `process_pool` (a
`concurrent.futures.ProcessPoolExecutor`) or `multiprocessing_pool` (a `multiprocessing.Pool`).
Their workers, before running anything else:

- die with the process that started them (`die_with_parent`): if the parent is killed
  (``kill -9``, the OOM killer), no orphan keeps running, writing outputs and completion markers,
  or holding the caller's pipes open;
- ignore SIGINT and take SIGTERM's default action: Ctrl-C reaches the whole terminal process
  group, and the parent alone decides what to do (stop its pool and clean up), so workers print
  no tracebacks of their own. `kill_pool` stops a pool's workers at once.

Interrupts: the CLI (`interrupt_handlers`) turns the first SIGINT or SIGTERM into
``KeyboardInterrupt`` (so SIGTERM, what ``timeout``, systemd and Kubernetes send, cleans up like
Ctrl-C); a later SIGINT exits at once (`exit_interrupted`: one line ``interrupted``, status 130);
a later SIGTERM is ignored while the cleanup runs (``timeout`` sends SIGTERM twice: to the
command and to its process group; the sender's SIGKILL is the hard stop). A command that handles
signals itself (the trainer's graceful stop) records them with `note_interrupt`, so that the same
policy applies once its own handlers are gone.

`gc_paused` turns the cyclic garbage collector off while a large structure is built.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NoReturn

INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C
START_METHODS = ("fork", "spawn")  # the worker's parent is this process (not a fork server)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (other users' processes too; zombies do not).

    Off POSIX systems every pid > 0 counts as alive: the answer errs on the safe side.
    """
    if pid <= 0:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # Linux: a killed orphan stays a zombie until an init that does not reap it does
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _kill_self() -> NoReturn:
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)


def watch_parent(parent_pid: int, poll_s: float = 0.5) -> threading.Thread:
    """Start a daemon thread that kills this process once its parent is no longer `parent_pid`.

    The portable fallback of `die_with_parent` (POSIX re-parents an orphan, so ``os.getppid()``
    changes); it reacts within `poll_s` seconds.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        _kill_self()

    thread = threading.Thread(target=watch, name="lmforge-parent-watch", daemon=True)
    thread.start()
    return thread


def die_with_parent(parent_pid: int) -> None:
    """Make this process die (SIGKILL) when its parent, `parent_pid`, dies; call it first thing.

    `parent_pid` is the pid of the process that started this one, read there (``os.getpid()``)
    and passed in: if the parent died before this call, this process dies now. On Linux this is
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, which fires when the *thread* that started this process
    exits: start workers from a thread that outlives them (the main thread, or the pool owner).
    Elsewhere a `watch_parent` thread does the same within half a second.
    """
    watched = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: the thread below
            watched = ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if os.getppid() != parent_pid:  # the parent died before: nobody would signal this process
        _kill_self()
    if not watched:
        watch_parent(parent_pid)


def _init_worker(parent_pid: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's handler
    if initializer is not None:
        initializer(*initargs)


def fast_start_method() -> str:
    """"fork" where the platform has it (workers start in milliseconds), else "spawn".

    Fork only from code that runs no threads of its own while forking (a pool started from
    the main thread of a CLI command); "spawn" is the safe choice otherwise.
    """
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _context(method: str) -> multiprocessing.context.BaseContext:
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}, not {method!r}")
    return multiprocessing.get_context(method)


def process_pool(
    workers: int,
    *,
    method: str = "spawn",
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> ProcessPoolExecutor:
    """A `ProcessPoolExecutor` of `workers` processes that die with this process (see module).

    `method` is "spawn" or "fork"; `initializer(*initargs)` runs in each worker after the setup.
    Use it from the thread that will also shut it down (`die_with_parent`).
    """
    return ProcessPoolExecutor(workers, mp_context=_context(method), initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs))


def multiprocessing_pool(
    workers: int,
    *,
    method: str = "spawn",
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> multiprocessing.pool.Pool:
    """A `multiprocessing.Pool` of `workers` processes that die with this process (see module).

    As `process_pool`; leaving its ``with`` block (or ``.terminate()``) stops the workers at once.
    """
    return _context(method).Pool(workers, initializer=_init_worker,
                                 initargs=(os.getpid(), initializer, initargs))


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the workers of `pool`, wait for them to be gone, and shut it down.

    For an interrupt or a fatal error: running tasks are lost (their atomic writes leave only
    temp files), queued ones are cancelled.
    """
    # ProcessPoolExecutor has no public way to stop running tasks before Python 3.14.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        process.join()
    # A worker killed while sending its result leaves half a message in the result pipe, and
    # this process's own copy of the pipe's write end would keep the pool's manager thread
    # waiting for the rest forever (shutdown, and exit, wait for that thread). Closing it gives
    # the reader end-of-file: the pool is marked broken and the thread ends.
    with contextlib.suppress(Exception):
        pool._result_queue._writer.close()  # type: ignore[attr-defined]
    # The interrupt may have come inside the manager thread's Thread.start(), before the new
    # thread marked itself started: joining it then raises, so wait for it to get going.
    deadline = time.monotonic() + 10
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except RuntimeError as e:
            if "before it is started" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


_interrupted = False  # a SIGINT/SIGTERM arrived during this CLI command (see `note_interrupt`)


def exit_interrupted() -> NoReturn:
    """Exit now with status 130 after printing ``interrupted`` on stderr; no cleanup runs.

    What a second Ctrl-C does: files being written are temp files (fsutil), which stay behind
    for the next run to remove (`lmforge.fsutil.remove_stale_temps`); workers die with this
    process.
    """
    with contextlib.suppress(Exception):  # the main thread may be inside a write to stdout
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, b"interrupted\n")
    os._exit(INTERRUPTED_EXIT_STATUS)


def note_interrupt() -> bool:
    """Record that this process got a SIGINT or SIGTERM; True if one was recorded before."""
    global _interrupted
    seen, _interrupted = _interrupted, True
    return seen


def raise_interrupt(signum: int, frame: object) -> None:
    """The CLI's SIGINT/SIGTERM handler: see the module docstring for the policy."""
    if note_interrupt():
        if signum == signal.SIGINT:
            exit_interrupted()
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_handlers() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM follow `raise_interrupt`; then the old handlers.

    Starts with no interrupt recorded. Outside the main thread (where Python cannot install
    handlers) it changes nothing.
    """
    global _interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted = False
    previous = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python; cannot restore
                signal.signal(sig, handler)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, on again after (if it was on).

    Building tens of thousands of small tuples or lists (a tokenizer's 50K merges) otherwise
    wakes the collector again and again, and its older generations walk everything alive; what
    is built here holds no cycles to collect. Usable as a decorator.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
