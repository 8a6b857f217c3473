"""Build a trace from a small dict (as a scenario YAML holds it).

```yaml
trace: mahimahi/ATT-LTE-driving.down          # a name or a path: same as {file: ...}
trace:
  file: mahimahi/ATT-LTE-driving.down         # resolved by resolve_trace
  format: mahimahi                            # optional (detected)
  bytes_per_opportunity: 1500                 # mahimahi only
  scale: 1000                                 # bandwidth x 1000 (Mb/s -> Gb/s)
  stretch: 1.0                                # time x k
  offset_s: 30                                # or random_offset_seed: 7
  loop: true                                  # false: play once
trace:
  synthetic: gauss_markov                     # constant | steps | markov | gauss_markov
  seed: 1                                     #   | on_off | cachegen (their arguments below)
  mean_mbps: 5
  duration_s: 300
trace:
  concat: [mahimahi/ATT-LTE-driving.down, {synthetic: constant, mbps: 0, duration_s: 5}]
```
Transforms apply in the order: scale, stretch, loop, offset (a trace played once is cut
at the offset). A synthetic trace takes `mahimahi_bytes_per_opportunity: 1500` to be quantised
to mahimahi opportunities. Unknown keys are an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvcast.errors import InputError
from kvcast.traces import edit
from kvcast.traces.catalog import resolve_trace
from kvcast.traces.readers import load_trace
from kvcast.traces.synthetic import GENERATORS, mahimahi_trace
from kvcast.traces.trace import Trace

_TRANSFORM_KEYS = {"scale", "stretch", "offset_s", "random_offset_seed", "loop", "name"}
_FILE_KEYS = {"file", "format", "bytes_per_opportunity", "end_s"}


def build_trace(
    spec: str | Path | Mapping[str, object],
    traces_dirs: Sequence[str | Path] = (),
    *,
    where: str = "trace",
) -> Trace:
    """A Trace from a name/path or a dict (see the module docstring); `where` prefixes errors."""
    if isinstance(spec, (str, Path)):
        return load_trace(resolve_trace(spec, traces_dirs))
    if not isinstance(spec, Mapping):
        raise InputError(f"{where}: expected a trace name, a path or a mapping, got {spec!r}")
    spec = dict(spec)
    kinds = [k for k in ("file", "synthetic", "concat") if k in spec]
    if len(kinds) != 1:
        raise InputError(f"{where}: give exactly one of 'file', 'synthetic' or 'concat'")
    kind = kinds[0]
    opts = {k: spec.pop(k) for k in list(spec) if k in _TRANSFORM_KEYS}
    if kind == "file":
        bad = set(spec) - _FILE_KEYS
        if bad:
            raise InputError(f"{where}: unknown key(s) {sorted(bad)} for a trace file")
        path = resolve_trace(str(spec.pop("file")), traces_dirs)
        fmt = spec.pop("format", None)
        tr = load_trace(path, fmt, **spec)  # type: ignore[arg-type]
    elif kind == "synthetic":
        gen_name = str(spec.pop("synthetic"))
        mm = spec.pop("mahimahi_bytes_per_opportunity", None)
        if gen_name not in GENERATORS:
            raise InputError(
                f"{where}.synthetic: {gen_name!r} is not one of {', '.join(GENERATORS)}"
            )
        gen = GENERATORS[gen_name]
        params = inspect.signature(gen).parameters
        bad = set(spec) - set(params)
        if bad:
            raise InputError(
                f"{where}: unknown key(s) {sorted(bad)} for synthetic {gen_name!r}; "
                f"expected some of {sorted(p for p in params if p != 'loop')}"
            )
        needs_seed = "seed" in params and params["seed"].default is inspect.Parameter.empty
        if needs_seed and "seed" not in spec:
            raise InputError(f"{where}: synthetic {gen_name!r} needs a 'seed'")
        try:
            tr = gen(**spec)  # type: ignore[arg-type]
            if mm is not None:
                tr = mahimahi_trace(tr, float(mm))  # type: ignore[arg-type]
        except InputError:
            raise
        except (TypeError, ValueError) as exc:  # a parameter of the wrong type
            raise InputError(f"{where}: synthetic {gen_name!r}: {exc}") from None
    else:
        parts = spec.pop("concat")
        if spec:
            raise InputError(f"{where}: unknown key(s) {sorted(spec)} next to 'concat'")
        if not isinstance(parts, list) or not parts:
            raise InputError(f"{where}.concat: expected a non-empty list of traces")
        tr = edit.concat(
            [build_trace(p, traces_dirs, where=f"{where}.concat[{i}]") for i, p in enumerate(parts)]
        )
    return _apply(tr, opts, where)


def _apply(tr: Trace, opts: dict[str, object], where: str) -> Trace:
    def num(key: str) -> float:
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{where}.{key}: expected a number, got {v!r}")
        return float(v)

    if "scale" in opts:
        tr = edit.scale(tr, num("scale"))
    if "stretch" in opts:
        tr = edit.stretch(tr, num("stretch"))
    if "offset_s" in opts and "random_offset_seed" in opts:
        raise InputError(f"{where}: give offset_s or random_offset_seed, not both")
    if "loop" in opts:
        if not isinstance(opts["loop"], bool):
            raise InputError(f"{where}.loop: expected true or false, got {opts['loop']!r}")
        tr = edit.with_loop(tr, opts["loop"])
    if "offset_s" in opts:
        tr = edit.offset(tr, num("offset_s"))
    if "random_offset_seed" in opts:
        tr = edit.random_offset(tr, int(num("random_offset_seed")))
    if "name" in opts:
        tr.name = str(opts["name"])
    return tr
