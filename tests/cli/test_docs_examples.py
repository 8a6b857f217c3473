"""The commands the README and the docs show: every one parses (its options exist and take the
values shown), and the ones that run in seconds run here as a user would type them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kvcast.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "profiles" / "README.md"]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command): `kvcast ...` lines of fenced code blocks, and the README's command table.
    Synopsis lines (with `[optional]` parts or `a|b` choices) are not examples."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        lines = [
            line.strip().removeprefix("$ ")
            for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
            for line in block.splitlines()
        ]
        if path.name == "README.md" and path.parent == REPO:
            lines += re.findall(r"^\| `(kvcast [^`]+)`", text, re.M)
        for line in lines:
            command = re.split(r"\s+#", line)[0].strip()
            if command.startswith("kvcast ") and "[" not in command and "|" not in command:
                found.append((str(path.relative_to(REPO)), command))
    return sorted(set(found))


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 15
    assert any(c.startswith("kvcast run ") for _, c in COMMANDS)


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_every_documented_command_parses(doc: str, command: str) -> None:
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")


@pytest.mark.slow
def test_the_quick_documented_commands_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KVCAST_OUT", str(tmp_path / "out"))
    quick = [
        "kvcast codec levels",
        "kvcast contexts list",
        "kvcast profile curve smollm2-135m-cpu",
        "kvcast run quickstart",
    ]
    for command in quick:
        assert ("README.md", command) in COMMANDS or any(c == command for _, c in COMMANDS)
        assert main(shlex.split(command)[1:]) == 0, command
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    assert (runs[-1] / "report.html").is_file()  # `kvcast run` built the report
    assert main(["report", str(runs[-1])]) == 0  # `kvcast report RUN_DIR`
    capsys.readouterr()
