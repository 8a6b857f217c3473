"""kvcast.traces: bandwidth traces (mahimahi, Pensieve cooked, sabre, CSV, synthetic).

The public API (see docs/traces.md):

- `Trace`, `load_trace(path, fmt=None, **opts)`, `detect_format(path)`;
- `resolve_trace(name_or_path, traces_dirs=())`, `fetch_set(name)`, `SETS`;
- `build_trace(spec)` for scenario files;
- generators in `kvcast.traces.synthetic`, transforms in `kvcast.traces.edit`.
"""

from kvcast.traces.catalog import SETS, fetch_set, resolve_trace
from kvcast.traces.readers import FORMATS, TraceFormatError, detect_format, load_trace
from kvcast.traces.spec import build_trace
from kvcast.traces.trace import Trace, from_opportunities, from_rates

__all__ = [
    "FORMATS",
    "SETS",
    "Trace",
    "TraceFormatError",
    "build_trace",
    "detect_format",
    "fetch_set",
    "from_opportunities",
    "from_rates",
    "load_trace",
    "resolve_trace",
]
