"""Shared test helpers: locating the reference fixtures in ``../shared`` (skip when absent)."""

from __future__ import annotations

import os
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
