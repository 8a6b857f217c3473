"""The `kvcast` entry point: version and help on every subcommand."""

from __future__ import annotations

import pytest

from kvcast import __version__
from kvcast.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def _subcommand_paths(parser, prefix=()):  # type: ignore[no-untyped-def]
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(child, (*prefix, name))


def test_help_on_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    paths = list(_subcommand_paths(build_parser()))
    assert ("bench",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        assert "usage: kvcast" in capsys.readouterr().out
