"""Shared test helpers: locating the reference fixtures in ``../shared`` (skip when absent)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: CI machines are small and shared, and timing is not what these test.
# Under CI the examples are derandomized so a red run can be reproduced exactly.
settings.register_profile("lmforge", deadline=None, derandomize=bool(os.environ.get("CI")))
settings.load_profile("lmforge")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LMFORGE_SHARED", REPO.parent / "shared"))

if (SHARED / "tiktoken-cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str((SHARED / "tiktoken-cache").resolve()))


def shared_path(*parts: str) -> Path:
    """Path to a file under ``../shared``; skips the calling test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference fixture {p} is absent (../shared is not beside the repo)")
    return p


@pytest.fixture
def cs336_a1() -> Path:
    """The CS336 assignment 1 fixtures directory (GPT-2 vocab/merges, corpus.en, reference BPE)."""
    return shared_path("fixtures", "cs336-a1")


# ------------------------------------------------------------------ nothing left behind

_WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """A test that leaves a SIGINT/SIGTERM handler installed fails: later tests (and CI's own
    SIGTERM on a timeout) would meet a handler that is not Python's default. Run a library that
    leaves one (Ray) with ``tests.fresh_process.in_fresh_process``."""
    before = {s: signal.getsignal(s) for s in _WATCHED_SIGNALS}
    yield
    left = {s: h for s in _WATCHED_SIGNALS if (h := signal.getsignal(s)) is not before[s]}
    for s in left:
        signal.signal(s, before[s])
    if left:
        pytest.fail(f"the test left signal handlers installed: {left}", pytrace=False)
