"""Every command a user would copy from README.md runs, in order, as written.

The commands are read from the README's ```bash and ```python blocks, so a command added to the
README is tested without touching this file, and one that breaks fails here. They run in a fresh
directory that holds only the repository's shipped `data/` and `configs/` (as on a new clone).
Only the scale changes: commands that train get the documented `--set` / `--minutes` overrides
below appended, and `serve` gets a free port and is stopped once it answers. Install steps
(`python3.11 -m venv`, `pip install`) are not re-run here: `.ci/run` runs the README's test
command itself, which the last test checks.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Appended to commands that would otherwise train for minutes (all documented options).
TINY_MODEL = ["--set", "model.d_model=32", "--set", "model.num_layers=1", "--set",
              "model.num_heads=2", "--set", "model.context_length=32", "--set",
              "train.batch_size=2", "--set", "train.threads=1"]  # fmt: skip
# The alignment section fine-tunes runs/demo on prompts of ~60 byte-level tokens: its context.
TINY_DEMO = [a.replace("context_length=32", "context_length=128") for a in TINY_MODEL]
TINY_ALIGN = ["--set", "train.max_steps=2", "--no-progress"]
SCALE = {
    ("lmforge", "demo"): ["--minutes", "0.3", "--no-progress", "--set", "model.vocab_size=320",
                          *TINY_DEMO],
    ("lmforge", "sft"): TINY_ALIGN,
    ("lmforge", "dpo"): TINY_ALIGN,
    ("lmforge", "grpo"): [*TINY_ALIGN, "--set", "grpo.group_size=2", "--set",
                          "grpo.prompts_per_rollout=2", "--set", "grpo.max_new_tokens=8",
                          "--set", "grpo.eval_examples=4"],
    ("lmforge", "train", "--config"): ["--set", "train.max_steps=4", "--set",
                                       "train.eval_interval=2", "--set",
                                       "train.checkpoint_interval=2", "--set",
                                       "optim.warmup_iters=1", *TINY_MODEL],
}
INSTALL = ("python3.11 -m venv", "pip install", ". .venv/bin/activate", "ruff check", "mypy",
           "LMFORGE_REQUIRE_NATIVE=1 pytest")


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced ```bash / ```python block, in order."""
    return [(m[1], m[2]) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


def bash_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, `&&` chains split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        for part in line.split(" && "):
            part = part.strip()
            if part and not part.startswith("#"):
                commands.append(part)
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the `lmforge` script of this environment
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1"}


def _serve(argv: list[str], cwd: Path) -> None:
    """Start `lmforge serve` on a free port, wait until /health answers, stop it with SIGTERM."""
    import httpx

    port = _free_port()
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"{shlex.join(argv)} exited:\n{proc.stdout.read()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{shlex.join(argv)} never answered /health"
            time.sleep(0.3)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                           json={"prompt": "Once upon a time", "max_tokens": 5})
        assert reply.status_code == 200, reply.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def run_command(command: str, cwd: Path) -> None:
    argv = shlex.split(command, comments=True)
    if not argv or command.startswith(INSTALL):
        return
    assert argv[0] == "lmforge", (
        f"README command {command!r} is not an lmforge command this test knows how to run; "
        "teach tests/test_readme.py to run it (at tiny scale)")
    if "data/mmlu" in argv:  # MMLU is not shipped: the reference copy in ../shared stands in
        mmlu = REPO.parent / "shared" / "fixtures" / "eval" / "mmlu"
        if not mmlu.is_dir():
            return  # nothing to evaluate on this machine (skipped, like ../shared's tests)
        if not (cwd / "data" / "mmlu").exists():
            (cwd / "data" / "mmlu").symlink_to(mmlu)
    for prefix, extra in SCALE.items():
        if tuple(argv[: len(prefix)]) == prefix:
            argv += extra
    if argv[:2] == ["lmforge", "serve"]:
        _serve(argv, cwd)
        return
    # Through bash, as a user's shell runs it: globs expand (they are left unquoted).
    line = " ".join(a if re.search(r"[*?[]", a) else shlex.quote(a) for a in argv)
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (
        f"README command failed (exit {done.returncode}): {shlex.join(argv)}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A directory holding what a fresh clone has that the commands read: data/ and configs/."""
    for name in ("data", "configs"):
        if not (REPO / name).is_dir():
            pytest.skip(f"{REPO / name} is absent (not a source checkout)")
        shutil.copytree(REPO / name, tmp_path / name)
    return tmp_path


def test_every_readme_command_runs_in_order(fresh_clone):
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5, "README.md lost its command blocks?"
    ran = 0
    for lang, body in blocks:
        if lang == "python":
            done = subprocess.run([sys.executable, "-c", body], cwd=fresh_clone, env=_env(),
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"README python block failed:\n{body}\n{done.stderr}"
            ran += 1
            continue
        for command in bash_commands(body):
            run_command(command, fresh_clone)
            ran += 1
    assert ran >= 15


def test_the_readme_test_command_is_what_ci_runs():
    blocks = [body.strip() for lang, body in readme_blocks(README.read_text("utf-8"))
              if lang == "bash"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert blocks[1] in ci, "the README's second command (install + tests) must be .ci/run's"
    assert blocks[0].endswith("lmforge demo"), "the README starts with the demo command"


def test_the_parser_finds_commands_in_a_block():
    body = ("lmforge a x \\\n    --set y=1   # comment\n# only a comment\n"
            "lmforge b && lmforge c\n")
    assert bash_commands(body) == ["lmforge a x  --set y=1   # comment", "lmforge b",
                                   "lmforge c"]


def _help_examples() -> list[tuple[str, str]]:
    """(command path, example line) for every `lmforge ...` line in an Example(s): section."""
    import click

    from lmforge.cli import main

    found = []

    def visit(cmd: click.Command, path: list[str]) -> None:
        text = cmd.help or ""
        heading = re.search(r"Examples?:", text)
        if heading:  # lines ending in a backslash continue on the next one, as in a shell
            joined = re.sub(r"\\\n\s*", " ", text[heading.end():])
            for line in joined.splitlines():
                line = line.strip()
                if line.startswith("lmforge "):
                    found.append((" ".join(path), line))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(click.Context(cmd)):
                visit(cmd.get_command(click.Context(cmd), name), [*path, name])

    visit(main, ["lmforge"])
    return found


def test_every_help_example_parses():
    """Each `--help` example names real subcommands and options, with valid values."""
    import click

    from lmforge.cli import main

    examples = _help_examples()
    assert len(examples) >= 20
    for where, line in examples:
        args = shlex.split(line, comments=True)[1:]
        cmd, ctx = main, click.Context(main)
        while isinstance(cmd, click.Group):
            name, args = args[0], args[1:]
            cmd = cmd.get_command(ctx, name)
            assert cmd is not None, f"`{where} --help` example {line!r}: no command {name!r}"
            ctx = click.Context(cmd, parent=ctx)
        try:
            cmd.make_context(name, list(args), parent=ctx.parent)
        except click.BadParameter as e:  # a path the example expects the user to have made
            assert "does not exist" in str(e), f"`{where} --help` example {line!r}: {e}"
        except click.UsageError as e:
            pytest.fail(f"`{where} --help` example {line!r} does not parse: {e}")
