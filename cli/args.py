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


def positive_float(text: str) -> float:
    """A number > 0 (rates, durations, factors)."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A number >= 0 (delays)."""
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def comma_list(text: str | None) -> list[str]:
    """The items of a comma-separated option (`--controllers a,b`), blanks dropped."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
