"""Which codec made a measurement: the key that cached measurements (chunk costs, calibration
profiles) are stored under, so a changed codec never reuses old figures while an edit that
changes no output (a docstring, a help text) keeps them.

Bump `CODEC_REVISION` in any change that alters encoded bytes, decoded values or fitted tables
for the same input (tests/test_golden_runs.py fails on such a change, as a reminder).
"""

from __future__ import annotations

import hashlib

from kvcast.codec import container
from kvcast.codec.ladder import DEFAULT_LADDER

CODEC_REVISION = 1


def codec_identity() -> str:
    """Container version, codec revision and the default ladder's definitions, hashed."""
    h = hashlib.sha256(f"container {container.VERSION} revision {CODEC_REVISION}".encode())
    h.update(DEFAULT_LADDER.read_bytes())
    return h.hexdigest()[:16]
