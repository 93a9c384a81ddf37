"""The project's mypy settings catch a call with a missing argument inside an unannotated function.

The demo once called ``_make_optimizer(model, config)`` when it needed a third ``ctx`` argument;
CI runs ``mypy`` (the README's test command) with pyproject.toml's ``[tool.mypy]``, whose
``check_untyped_defs`` makes mypy check such calls in functions without annotations too.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (the dev extra)")
def test_mypy_config_catches_a_wrong_arity_call_in_an_unannotated_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def make_optimizer(model, config, ctx):\n"
        "    return model, config, ctx\n\n\n"
        "def run(model, config):\n"
        "    return make_optimizer(model, config)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT),
         "--cache-dir", str(tmp_path / "cache"), str(probe)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Missing positional argument "ctx"' in result.stdout
