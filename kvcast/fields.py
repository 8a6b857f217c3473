"""Reading a document field by field (scenario, codec profile, chunk-cost file, ladder,
objective), with one wording for every error: `<source>: field '<dotted path>': <what was
expected>`, and one definition of a valid number, integer, string, mapping and list.

Two ways in: `Checker` checks a value found at a path (for nested lists and objects), `Fields`
reads one mapping key by key and rejects the keys nobody read (for sections with defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from kvcast.errors import InputError


class Checker:
    """Checks values of one document; errors name the document and the field's path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> InputError:
        return InputError(f"{self.source}: field {where or '(top level)'!r}: {what}")

    def mapping(
        self,
        value: Any,
        where: str,
        required: Sequence[str] = (),
        optional: Sequence[str] | None = (),
    ) -> Mapping[str, Any]:
        """A mapping with every `required` key and no key outside required + `optional`
        (`optional=None`: any other key is allowed)."""
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(where, f"missing required key(s): {', '.join(missing)}")
        if optional is not None:
            unknown = [k for k in value if k not in required and k not in optional]
            if unknown:
                allowed = ", ".join([*required, *optional])
                raise self.fail(
                    where, f"unknown key(s) {', '.join(map(str, unknown))} (allowed: {allowed})"
                )
        return value

    def number(
        self,
        value: Any,
        where: str,
        *,
        positive: bool = False,
        lo: float | None = None,
        hi: float | None = None,
    ) -> float:
        """A finite real number (not a bool), > 0 if `positive`, within [lo, hi]."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"expected a number, got {value!r}")
        x = float(value)
        if not math.isfinite(x):
            raise self.fail(where, f"expected a finite number, got {value!r}")
        if positive and x <= 0:
            raise self.fail(where, f"expected a number > 0, got {value!r}")
        if lo is not None and x < lo:
            raise self.fail(where, f"expected a number >= {lo}, got {value!r}")
        if hi is not None and x > hi:
            raise self.fail(where, f"expected a number <= {hi}, got {value!r}")
        return x

    def optional_number(self, value: Any, where: str, **limits: Any) -> float | None:
        return None if value is None else self.number(value, where, **limits)

    def integer(
        self, value: Any, where: str, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        """An integer (not a bool) within [lo, hi]."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {value!r}")
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise self.fail(where, f"expected an integer in {lo}..{hi}, got {value!r}")
        if lo is not None and value < lo:
            raise self.fail(where, f"expected an integer >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise self.fail(where, f"expected an integer <= {hi}, got {value!r}")
        return value

    def string(self, value: Any, where: str, choices: Sequence[str] | None = None) -> str:
        """A non-empty string, one of `choices` when given."""
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def numbers(self, value: Any, where: str, **limits: Any) -> tuple[float, ...]:
        """A list of numbers, each checked as `number`."""
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise self.fail(where, f"expected a list of numbers, got {type(value).__name__}")
        return tuple(self.number(v, f"{where}[{i}]", **limits) for i, v in enumerate(value))

    def integers(self, value: Any, where: str, **limits: Any) -> tuple[int, ...]:
        """A list of integers, each checked as `integer`."""
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise self.fail(where, f"expected a list of integers, got {type(value).__name__}")
        return tuple(self.integer(v, f"{where}[{i}]", **limits) for i, v in enumerate(value))


class Fields:
    """One mapping of a document, read key by key; `done()` rejects the keys nobody read."""

    def __init__(self, source: str | Checker, where: str, raw: Any) -> None:
        self.check = source if isinstance(source, Checker) else Checker(source)
        self.source, self.where = self.check.source, where
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise self.fail("", f"expected a mapping, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, what: str) -> InputError:
        return self.check.fail(self.path(key) if key else self.where, what)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def sub(self, key: str) -> Fields:
        return Fields(self.check, self.path(key), self.get(key))

    def number(
        self,
        key: str,
        default: float | None,
        *,
        lo: float | None = None,
        positive: bool = False,
        required: bool = False,
    ) -> float:
        if required and key not in self.raw:
            raise self.fail(key, "required")
        return self.check_number(key, self.get(key, default), lo=lo, positive=positive)

    def check_number(
        self, key: str, v: Any, *, lo: float | None = None, positive: bool = False
    ) -> float:
        return self.check.number(v, self.path(key), lo=lo, positive=positive)

    def integer(self, key: str, default: int | None, *, lo: int = 1) -> int:
        return self.check_int(key, self.get(key, default), lo=lo)

    def check_int(self, key: str, v: Any, *, lo: int = 1) -> int:
        return self.check.integer(v, self.path(key), lo=lo)

    def string(self, key: str, default: str | None, choices: Sequence[str] | None = None) -> str:
        v = self.get(key, default)
        if v is None:
            raise self.fail(key, "required")
        return self.check.string(v, self.path(key), choices)

    def listish(self, key: str, default: Any) -> list[Any]:
        """A value or a non-empty list of values, as a list (a sweep)."""
        v = self.get(key, default)
        if isinstance(v, list | tuple):
            if not v:
                raise self.fail(key, "expected a value or a non-empty list")
            return list(v)
        return [v]

    def done(self) -> None:
        unknown = [k for k in self.raw if k not in self.used]
        if unknown:
            raise self.fail(
                "",
                f"unknown key(s) {', '.join(map(str, unknown))} "
                f"(allowed: {', '.join(sorted(self.used))})",
            )
