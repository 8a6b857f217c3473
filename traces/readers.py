"""Readers for the trace formats in common use, with format detection.

| format     | one line / entry                         | units                      |
|------------|------------------------------------------|----------------------------|
| `mahimahi` | one delivery opportunity                 | integer ms                 |
| `cooked`   | `time_s  Mbit/s` (Pensieve)              | step, row i on (t[i-1], t[i]] |
| `sabre`    | JSON list of {duration_ms, bandwidth_kbps, latency_ms} | ms, kbit/s   |
| `csv`      | `time_s,mbps` (optional header)          | step, row i on [t[i], t[i+1]) |

A malformed line raises `TraceFormatError` naming ``file:line`` and what was expected.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from kvcast.errors import InputError
from kvcast.traces.trace import Trace, from_opportunities, from_rates, from_steps

FORMATS = ("mahimahi", "cooked", "sabre", "csv")

# mm-link credits PACKET_SIZE = 1504 bytes per opportunity (the largest TUN read); the
# mahimahi README and man page define the rate with 1500 bytes (one MTU-sized IP packet).
# kvcast counts IP bytes, so the default is 1500; pass 1504 to mirror mm-link's byte counter.
MAHIMAHI_BYTES_PER_OPPORTUNITY = 1500
MM_LINK_PACKET_SIZE = 1504


class TraceFormatError(InputError):
    """A trace file does not match its format; the message says file:line and what was expected."""


def _fail(path: Path, line: int | None, msg: str) -> TraceFormatError:
    where = f"{path}:{line}" if line is not None else str(path)
    return TraceFormatError(f"{where}: {msg}")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read trace file ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, None, f"not a text file (byte {exc.start} is not UTF-8)") from exc


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


# ---------------------------------------------------------------------- mahimahi
_INT = re.compile(r"^\s*(\d+)\s*$")


def read_mahimahi(
    path: Path,
    *,
    bytes_per_opportunity: float = MAHIMAHI_BYTES_PER_OPPORTUNITY,
    loop: bool = True,
    name: str | None = None,
) -> Trace:
    """mahimahi: one integer ms timestamp per line, non-decreasing; the period is the last one.

    Rules follow mm-link: no empty lines, not an empty file, last timestamp > 0.
    """
    path = Path(path)
    if not bytes_per_opportunity > 0:
        raise InputError(f"bytes_per_opportunity must be > 0 (got {bytes_per_opportunity})")
    lines = _lines(_read_text(path))
    if not lines:
        raise _fail(path, None, "empty file; expected one integer millisecond timestamp per line")
    try:
        ms = np.array(lines, dtype=np.int64)
    except ValueError:
        ms = None
    if ms is None or len(lines) != ms.size:
        for i, ln in enumerate(lines, 1):
            if not _INT.match(ln):
                what = "empty line" if not ln.strip() else f"{ln.strip()[:40]!r}"
                raise _fail(
                    path, i, f"{what}: expected a non-negative integer timestamp in ms"
                ) from None
        raise _fail(path, None, "could not parse timestamps")  # pragma: no cover
    if (ms < 0).any():
        i = int(np.argmax(ms < 0)) + 1
        raise _fail(path, i, f"'{ms[i - 1]}': expected a non-negative integer timestamp in ms")
    dec = np.flatnonzero(np.diff(ms) < 0)
    if dec.size:
        i = int(dec[0]) + 2
        raise _fail(path, i, f"timestamp {ms[i - 1]} < previous {ms[i - 2]}; must not decrease")
    if ms[-1] <= 0:
        raise _fail(path, len(lines), "the last timestamp must be > 0 (it is the loop period)")
    return from_opportunities(
        name or path.name,
        ms.astype(np.float64) / 1000.0,
        bytes_per_opportunity,
        loop=loop,
        meta={"format": "mahimahi", "path": str(path)},
    )


# ---------------------------------------------------------------------- two-column numeric
def _parse_rows(path: Path, lines: list[str], sep: str | None, what: str) -> tuple[list, list]:
    times: list[float] = []
    vals: list[float] = []
    for i, ln in enumerate(lines, 1):
        parts = ln.split(sep) if sep else ln.split()
        parts = [p.strip() for p in parts]
        if len(parts) != 2:
            raise _fail(path, i, f"{ln.strip()[:60]!r}: expected {what}")
        try:
            t, v = float(parts[0]), float(parts[1])
        except ValueError:
            raise _fail(path, i, f"{ln.strip()[:60]!r}: expected {what}") from None
        if not (math.isfinite(t) and math.isfinite(v)):
            raise _fail(path, i, f"non-finite number; expected {what}")
        if v < 0:
            raise _fail(path, i, f"negative bandwidth {v}; expected >= 0")
        if times and t <= times[-1]:
            raise _fail(path, i, f"time {t} is not after the previous {times[-1]}")
        times.append(t)
        vals.append(v)
    return times, vals


def read_cooked(path: Path, *, loop: bool = True, name: str | None = None) -> Trace:
    """Pensieve cooked: `time_s  Mbit/s`; row i's rate holds over (t[i-1], t[i]].

    Row 0 only sets the origin (its rate is never used, as in Pensieve's simulator); a trace
    whose first time is not 0 is shifted to start at 0 (Pensieve assumes traces start at 0).
    """
    path = Path(path)
    lines = _lines(_read_text(path))
    if not lines:
        raise _fail(path, None, "empty file; expected lines of 'time_s  Mbit/s'")
    t, v = _parse_rows(path, lines, None, "two numbers 'time_s  Mbit/s'")
    if len(t) < 2:
        raise _fail(path, 1, "need at least two rows (row i's rate holds from t[i-1] to t[i])")
    ta = np.array(t)
    va = np.array(v)
    return from_steps(
        name or path.name,
        ta - ta[0],
        va[1:] * 1e6,
        loop=loop,
        meta={"format": "cooked", "path": str(path), "time_origin_s": f"{ta[0]:g}"},
    )


_HEADER = re.compile(r"^\s*[A-Za-z_][\w ()/]*\s*,\s*[A-Za-z_][\w ()/]*\s*$")


def read_csv(
    path: Path, *, loop: bool = True, name: str | None = None, end_s: float | None = None
) -> Trace:
    """Plain CSV `time_s,mbps`: row i's rate holds from t[i] until t[i+1].

    The last row holds until `end_s` (default: one more interval as long as the one before it).
    An optional header line is allowed. The first time must be 0.
    """
    path = Path(path)
    lines = _lines(_read_text(path))
    first = 1
    if lines and _HEADER.match(lines[0]):
        lines = lines[1:]
        first = 2
    if not lines:
        raise _fail(path, None, "no data rows; expected lines of 'time_s,mbps'")
    try:
        t, v = _parse_rows(path, lines, ",", "'time_s,mbps' (two comma-separated numbers)")
    except TraceFormatError as exc:
        if first == 2:  # shift line numbers past the header
            m = re.match(rf"^{re.escape(str(path))}:(\d+): (.*)$", str(exc), re.S)
            if m:
                raise _fail(path, int(m.group(1)) + 1, m.group(2)) from None
        raise
    if t[0] != 0:
        raise _fail(path, first, f"first time is {t[0]}; expected 0 (traces start at 0 s)")
    if end_s is None:
        if len(t) < 2:
            raise _fail(path, first, "one row needs end_s= to say how long it lasts")
        end = t[-1] + (t[-1] - t[-2])
    else:
        end = float(end_s)
        if not end > t[-1]:
            raise InputError(f"{path}: end_s={end_s} must be after the last time {t[-1]}")
    ta = np.array(t + [end])
    return from_steps(
        name or path.name,
        ta,
        np.array(v) * 1e6,
        loop=loop,
        meta={"format": "csv", "path": str(path)},
    )


# ---------------------------------------------------------------------- sabre
def read_sabre(path: Path, *, loop: bool = True, name: str | None = None) -> Trace:
    """sabre network JSON: a list of {duration_ms, bandwidth_kbps, latency_ms}; loops.

    kbit/s are 1000 bit/s. Each entry's latency is kept as the trace's latency at that time.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, exc.lineno, f"invalid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not data:
        raise _fail(path, None, "expected a non-empty JSON list of network periods")
    d, r, lat = [], [], []
    for i, item in enumerate(data):
        where = f"entry {i}"
        if not isinstance(item, dict):
            raise _fail(path, None, f"{where}: expected an object with duration_ms, bandwidth_kbps")
        for key in ("duration_ms", "bandwidth_kbps"):
            if key not in item:
                raise _fail(path, None, f"{where}: missing field {key!r}")
        vals = []
        for key in ("duration_ms", "bandwidth_kbps", "latency_ms"):
            x = item.get(key, 0)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise _fail(path, None, f"{where}: field {key!r} must be a finite number")
            if x < 0:
                raise _fail(path, None, f"{where}: field {key!r} must be >= 0 (got {x})")
            vals.append(float(x))
        d.append(vals[0] / 1000.0)
        r.append(vals[1] * 1000.0)
        lat.append(vals[2] / 1000.0)
    return from_rates(
        name or path.name,
        np.array(d),
        np.array(r),
        loop=loop,
        meta={"format": "sabre", "path": str(path)},
        latency_s=np.array(lat),
    )


# ---------------------------------------------------------------------- detection
def detect_format(path: Path) -> str:
    """Guess the format from the extension and the first non-empty line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "sabre"
    if suffix == ".csv":
        return "csv"
    if suffix in (".up", ".down"):
        return "mahimahi"
    head = _read_text(path)[:4096]
    stripped = head.lstrip()
    if stripped.startswith("[") or stripped.startswith("{"):
        return "sabre"
    first = next((ln for ln in _lines(head) if ln.strip()), None)
    if first is None:
        raise _fail(path, None, "empty file; cannot detect the trace format")
    if _INT.match(first):
        return "mahimahi"
    if "," in first:
        return "csv"
    if len(first.split()) == 2:
        return "cooked"
    raise _fail(
        path,
        1,
        f"{first.strip()[:60]!r}: unknown trace format; expected one of {', '.join(FORMATS)}",
    )


def load_trace(path: str | Path, fmt: str | None = None, **opts: object) -> Trace:
    """Read a trace file in `fmt` (detected when None).

    Options: `loop` (bool, default True), `name`; mahimahi: `bytes_per_opportunity`
    (default 1500, see MAHIMAHI_BYTES_PER_OPPORTUNITY); csv: `end_s`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: trace file not found")
    fmt = fmt or detect_format(p)
    readers = {
        "mahimahi": read_mahimahi,
        "cooked": read_cooked,
        "pensieve": read_cooked,
        "sabre": read_sabre,
        "csv": read_csv,
    }
    if fmt not in readers:
        raise InputError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        trace = readers[fmt](p, **opts)  # type: ignore[arg-type]
    except TypeError as exc:
        raise InputError(f"{p}: bad option for format {fmt!r}: {exc}") from None
    if trace.mean_bps() <= 0:
        raise InputError(f"{p}: the trace delivers no bytes at all (every rate is 0)")
    return trace
