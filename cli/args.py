"""Argument types shared by the commands: a bad number is refused by argparse with the option's
name, before any work starts."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1 (token counts, chunk sizes, repeats, workers)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def comma_list(text: str | None) -> list[str]:
    """The items of a comma-separated option (`--controllers a,b`), blanks dropped."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
