"""Running a piece of a test in a fresh Python process."""

from __future__ import annotations

from collections.abc import Callable

from lmforge.procutil import process_pool


def in_fresh_process(fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)`` in a fresh Python process (spawned, so nothing of this one is inherited); its
    exception, with the child's traceback, is raised here. For libraries that leave state in the
    process for good: Ray's driver keeps ~10 C++ threads after ``ray.shutdown()`` (a later
    ``fork()`` of the test process may then deadlock) and its SIGTERM handler (a CI run that times
    out would then not stop on SIGTERM). ``fn`` must be importable (a module-level function)."""
    with process_pool(1, method="spawn") as pool:
        return pool.submit(fn, *args).result()
