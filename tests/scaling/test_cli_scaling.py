"""`lmforge scaling fit | sweep | report` on their default paths, and bad input → `error:`, 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmforge.cli import main

REPO = Path(__file__).resolve().parents[2]
CS336 = REPO.parent / "shared" / "fixtures" / "scaling" / "isoflops_curves.json"
TINY = REPO / "configs" / "scaling" / "tiny.toml"


def _run(*args: str):
    return CliRunner().invoke(main, ["scaling", *args], catch_exceptions=False)


@pytest.fixture
def cs336() -> Path:
    if not CS336.is_file():
        pytest.skip(f"{CS336} is absent (the shared fixtures are not on this machine)")
    return CS336


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sweep"
    corpus = json.dumps(str(REPO / "data" / "small_en.txt"))
    result = _run("sweep", str(TINY), "--out", str(out), "--no-progress",
                  "--set", f"corpus.text={corpus}")
    assert result.exit_code == 0, result.output
    assert "6 point(s) trained, 0 already finished" in result.output
    return out


def test_fit_defaults_on_the_cs336_file(cs336):
    result = _run("fit", str(cs336))
    assert result.exit_code == 0, result.output
    assert "approach 1 not fitted" in result.output  # the file has no loss curves
    assert "approach 2-parabola" in result.output and "verdict:" in result.output


def test_fit_json_reproduces_the_handout_numbers(cs336):
    result = _run("fit", str(cs336), "--approach", "2", "--minimum", "lowest", "--target",
                  "1e23", "--bootstrap", "20", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)  # JSON only
    law = data["fits"]["2-lowest"]["n_opt"]
    assert law["a"] == pytest.approx(0.469, abs=0.002)
    row = data["comparison"]["rows"][0]
    assert row["n_opt"] == pytest.approx(7.0e10, rel=0.02)
    assert row["n_opt"] == pytest.approx(law["k"] * 1e23 ** law["a"], rel=1e-9)


def test_sweep_then_fit_and_report(swept, tmp_path):
    assert (swept / "records.json").is_file() and (swept / "report.md").is_file()
    again = _run("sweep", str(TINY), "--out", str(swept), "--no-progress", "--set",
                 f"corpus.text={json.dumps(str(REPO / 'data' / 'small_en.txt'))}")
    assert "0 point(s) trained, 6 already finished" in again.output

    fit = _run("fit", str(swept / "records.json"), "--approach", "2", "--json", "--plots",
               str(tmp_path / "plots"))
    assert fit.exit_code == 0, fit.output
    data = json.loads(fit.output)
    assert data["records"] == 6 and Path(data["plots"]["isoflop_2-parabola"]).is_file()
    assert _run("fit", str(swept)).exit_code == 0  # the sweep dir itself: its records.json

    report = _run("report", str(swept), "--target", "1e12", "--out", str(tmp_path / "r.md"),
                  "--bootstrap", "10")
    assert report.exit_code == 0, report.output
    text = (tmp_path / "r.md").read_text()
    assert "## Predictions at C = 1e+12 FLOPs" in text and "![" in text
    assert _run("report", str(swept)).exit_code == 0  # default: SWEEP/report.md
    assert (swept / "report.md").is_file()


def test_bad_input_is_an_error_line(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    for args in (["fit", str(tmp_path / "missing.json")], ["fit", str(empty)],
                 ["fit", str(empty), "--approach", "4"],
                 ["report", str(tmp_path / "missing.json")],
                 ["sweep", str(tmp_path / "missing.toml")]):
        result = CliRunner().invoke(main, ["scaling", *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_flop_rules_match_the_library():
    from lmforge.cli.scaling_fit import FLOP_RULES
    from lmforge.scaling.records import FLOP_RULES as LIBRARY

    assert FLOP_RULES == LIBRARY


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_a_rerun_finishes(tmp_path):
    """SIGINT (Ctrl-C) mid-sweep: the workers die with the pool, exit status 130 and the
    command to continue; the rerun trains what is left and every point ends at its last step."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    corpus = json.dumps(str(REPO / "data" / "small_en.txt"))
    argv = [sys.executable, "-m", "lmforge.cli", "scaling", "sweep", str(TINY), "--out",
            str(out), "--no-progress", "--workers", "2", "--set", f"corpus.text={corpus}",
            "--set", "sweep.budgets=[1e9]"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("points/*/checkpoints/step_*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "continue with: lmforge scaling sweep" in output and "Traceback" not in output

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for plan in json.loads((out / "plan.json").read_text()):
        rows = (out / "points" / plan["name"] / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["step"] == plan["steps"]
