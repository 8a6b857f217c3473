"""`kvcast bench kv-memory`: peak memory of capture, encode and decode against the cache size.

For each token count, in a model shape (a synthetic preset or ``LxHxD``), three child processes
run the real commands one after another, each measured alone (``os.wait4``: the child's own
peak resident set size and its wall time):

1. ``kvcast kv capture --model synthetic:SHAPE --fit FIT --tokens N -o kv.safetensors``
   (SYNTHETIC values, streamed to the file chunk by chunk);
2. ``kvcast codec encode kv.safetensors --level LEVEL -o chunks/`` (reads one chunk at a time);
3. ``kvcast codec decode chunks/*.kvc -o decoded.safetensors`` (writes each chunk as it comes).

The capture file is deleted once encoded (so the disk holds at most the cache once plus the
chunks), the rest after decoding. A baseline child (Python with torch, numba and the codec
imported, nothing done) says what any of them costs before it touches a KV element. Bounded
memory shows as peak RSS that stays flat while the cache grows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvcast.errors import InputError

STEPS = ("capture", "encode", "decode")
_BASELINE = "import torch, numba, kvcast.codec.codec, kvcast.kv.sources.synthetic"


@dataclass
class StepResult:
    peak_rss_bytes: int
    wall_s: float
    returncode: int


@dataclass
class SizeResult:
    tokens: int
    cache_bytes: int  # the KV file's tensor (float16)
    encoded_bytes: int = 0
    steps: dict[str, StepResult] = field(default_factory=dict)
    skipped: str = ""  # why, when it did not run


@dataclass
class KvMemoryResult:
    shape_name: str
    shape: tuple[int, int, int]
    level: str
    chunk_tokens: int
    fit: str
    baseline: StepResult
    sizes: list[SizeResult]
    commands: dict[str, str]


def run_child(argv: list[str], log: Path) -> StepResult:
    """Run `argv` to completion; its peak RSS (this child alone) and wall time."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux
    return StepResult(usage.ru_maxrss * 1024, time.perf_counter() - t0, proc.returncode)


def _kvcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvcast", *args]


def default_fit(say: Callable[[str], None]) -> Path:
    """A real cache to fit the synthetic statistics from: SmolLM2 on 512 tokens of the prose
    context, captured once and kept in the user cache."""
    from kvcast.paths import cache_dir  # deferred: only without --fit

    path = cache_dir() / "kv-memory" / "fit-smollm2-prose-512.safetensors"
    if not path.is_file():
        say(f"capturing the fit cache (SmolLM2, 512 tokens) into {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        log = path.with_suffix(".log")
        argv = _kvcast("kv", "capture", "--model", "smollm2", "--context", "prose",
                       "--tokens", "512", "-o", str(path))  # fmt: skip
        if run_child(argv, log).returncode != 0:
            raise InputError(
                f"could not capture the fit cache (see {log}); pass --fit FILE, a real KV file"
            )
    return path


def run_kv_memory(
    shape: str,
    tokens: list[int],
    *,
    level: str | None = None,
    chunk_tokens: int = 1500,
    fit: str | Path | None = None,
    workdir: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> KvMemoryResult:
    """Measure capture / encode / decode of a synthetic cache of each size in `tokens`."""
    from kvcast.codec.ladder import load_ladder  # deferred: only once the arguments are read
    from kvcast.kv.sources.synthetic import parse_shape  # deferred: imports numba

    name, dims = parse_shape(shape)
    level = level or load_ladder().default
    load_ladder().get(level)  # an unknown level fails before any work
    fit_path = Path(fit) if fit else default_fit(say)
    if not fit_path.is_file():
        raise InputError(f"--fit {fit_path}: no such file")
    per_token = dims[0] * 2 * dims[1] * dims[2]
    own = workdir is None
    work = Path(workdir) if workdir else Path(_mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    log = work / "kv-memory.log"
    kv, dec, chunks = work / "kv.safetensors", work / "decoded.safetensors", work / "chunks"
    commands = {
        "capture": f"kvcast kv capture --model synthetic:{name} --fit {fit_path} --tokens N "
        f"-o {kv}",
        "encode": f"kvcast codec encode {kv} --level {level} --chunk-tokens {chunk_tokens} "
        f"-o {chunks}",
        "decode": f"kvcast codec decode {chunks}/chunk_*.kvc -o {dec}",
    }
    say(f"baseline: python -c {_BASELINE!r}")
    baseline = run_child([sys.executable, "-c", _BASELINE], log)
    sizes = []
    try:
        for n in tokens:
            res = SizeResult(tokens=n, cache_bytes=n * per_token * 2)
            sizes.append(res)
            free = shutil.disk_usage(work).free
            if res.cache_bytes * 1.3 > free:  # the cache, then its chunks beside it
                res.skipped = (
                    f"needs ~{res.cache_bytes * 1.3 / 1e9:.1f} GB on disk, {free / 1e9:.1f} GB free"
                )
                say(f"{n} tokens: skipped ({res.skipped})")
                continue
            shutil.rmtree(chunks, ignore_errors=True)
            argv = {
                "capture": _kvcast("kv", "capture", "--model", f"synthetic:{name}",
                                   "--fit", str(fit_path), "--tokens", str(n), "-o", str(kv)),
                "encode": _kvcast("codec", "encode", str(kv), "--level", level,
                                  "--chunk-tokens", str(chunk_tokens), "-o", str(chunks)),
            }  # fmt: skip
            for step in STEPS:
                say(f"{n} tokens: {step} ...")
                if step == "decode":
                    files = sorted(str(p) for p in chunks.glob("chunk_*.kvc"))
                    res.encoded_bytes = sum(Path(p).stat().st_size for p in files)
                    kv.unlink(missing_ok=True)  # the disk holds the cache once at most
                    argv["decode"] = _kvcast("codec", "decode", *files, "-o", str(dec))
                r = run_child(argv[step], log)
                res.steps[step] = r
                say(
                    f"{n} tokens: {step} peak RSS {r.peak_rss_bytes / 2**20:,.0f} MiB, "
                    f"{r.wall_s:.1f} s" + ("" if r.returncode == 0 else f", exit {r.returncode}")
                )
                if r.returncode != 0:
                    raise InputError(
                        f"{step} of {n} tokens failed (exit {r.returncode}); see {log}"
                    )
            for p in (kv, dec):
                p.unlink(missing_ok=True)
            shutil.rmtree(chunks, ignore_errors=True)
    finally:
        for p in (kv, dec):
            p.unlink(missing_ok=True)
        shutil.rmtree(chunks, ignore_errors=True)
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return KvMemoryResult(name, dims, level, chunk_tokens, str(fit_path), baseline, sizes, commands)


def _mkdtemp() -> str:
    import tempfile  # deferred: only without --workdir

    return tempfile.mkdtemp(prefix="kvcast-kv-memory-")


def format_table(res: KvMemoryResult) -> str:
    """The table: per token count the cache size, and per step peak RSS (MiB) and wall time."""
    L, H, D = res.shape
    mib = 2**20
    head = [
        f"kv-memory: synthetic:{res.shape_name} ({L} layers x {H} KV heads x {D}), level "
        f"{res.level}, {res.chunk_tokens} tokens per chunk (SYNTHETIC values)",
        f"baseline (python + torch + numba + codec imported): peak RSS "
        f"{res.baseline.peak_rss_bytes / mib:,.0f} MiB",
        "",
        f"{'tokens':>8} {'cache fp16':>11} {'encoded':>10} "
        + " ".join(f"{s + ' RSS':>12} {s + ' s':>10}" for s in STEPS),
    ]
    rows = []
    for s in res.sizes:
        if s.skipped:
            rows.append(f"{s.tokens:>8} {s.cache_bytes / mib:>7,.0f} MiB  skipped: {s.skipped}")
            continue
        cells = []
        for step in STEPS:
            r = s.steps.get(step)
            cells.append(
                f"{r.peak_rss_bytes / mib:>8,.0f} MiB {r.wall_s:>10.1f}"
                if r
                else f"{'-':>12} {'-':>10}"
            )
        rows.append(
            f"{s.tokens:>8} {s.cache_bytes / mib:>7,.0f} MiB {s.encoded_bytes / mib:>6,.0f} MiB "
            + " ".join(cells)
        )
    done = [s for s in res.sizes if not s.skipped and len(s.steps) == len(STEPS)]
    tail = []
    if len(done) >= 2:
        a, b = done[0], done[-1]
        growth = ", ".join(
            f"{step} {(b.steps[step].peak_rss_bytes - a.steps[step].peak_rss_bytes) / mib:+,.0f} MiB"
            for step in STEPS
        )
        tail = [
            "",
            f"from {a.tokens} to {b.tokens} tokens the cache grows by "
            f"{(b.cache_bytes - a.cache_bytes) / mib:,.0f} MiB; peak RSS changes by: {growth}",
        ]
    return "\n".join(head + rows + tail)


def write_json(path: str | Path, res: KvMemoryResult) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=2) + "\n")
