"""Public trace sets: download at pinned commits, verify, cache; resolve trace names to files.

Names: ``<set>/<file>`` (e.g. ``mahimahi/ATT-LTE-driving.down``,
``pensieve/fcc_train/trace_5294_http---www.youtube.com``; a file name unique within its set
also works, e.g. ``pensieve/trace_5294_http---www.youtube.com``). `resolve_trace` looks in,
in order: the path itself, the folders passed as `traces_dirs`, ``$KVCAST_TRACES_DIR``
(``os.pathsep``-separated), and the user cache (``kvcast.paths.cache_dir() / "traces"``).

Download: ``fetch_set("mahimahi")`` takes each file from its repository at the pinned
commit (raw.githubusercontent.com), checks its size and SHA-256, and writes it into the
cache. ``base_url`` (or ``$KVCAST_TRACES_BASE_URL``) replaces the upstream with a mirror
laid out like the cache: ``<base_url>/<set>/<file>`` (used by the tests with a local
http.server).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvcast.errors import InputError, KvcastError
from kvcast.paths import cache_dir
from kvcast.traces.manifest import MAHIMAHI_FILES, PENSIEVE_FILES

BASE_URL_ENV = "KVCAST_TRACES_BASE_URL"
TRACES_DIR_ENV = "KVCAST_TRACES_DIR"


@dataclass(frozen=True)
class TraceFile:
    rel: str  # path under the set folder (and under a mirror's set folder)
    upstream: str  # path in the upstream repository
    sha256: str
    size: int


@dataclass(frozen=True)
class TraceSet:
    name: str
    repo: str
    commit: str
    fmt: str
    license: str
    attribution: str
    files: tuple[TraceFile, ...]

    def upstream_url(self, f: TraceFile) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{f.upstream}"


SETS: dict[str, TraceSet] = {
    "mahimahi": TraceSet(
        name="mahimahi",
        repo="ravinet/mahimahi",
        commit="ae477d437615b972217498ba52be07db17a15618",
        fmt="mahimahi",
        license="GPL-3+ (Copyright 2013 The Mahimahi Authors; see the repository's COPYING)",
        attribution=(
            "Recorded with Saturator: Winstein, Sivaraman, Balakrishnan, 'Stochastic Forecasts "
            "Achieve High Throughput and Low Delay over Cellular Networks', USENIX NSDI 2013."
        ),
        files=tuple(TraceFile(*row) for row in MAHIMAHI_FILES),
    ),
    "pensieve": TraceSet(
        name="pensieve",
        repo="hongzimao/pensieve",
        commit="a49b2ac17f4ec0f5337e3ca9b00a8a8276e22e6f",  # refs/pull/133/head
        fmt="cooked",
        license=(
            "Pensieve is MIT licensed; the raw data belongs to the FCC (US public data) and to "
            "Riiser et al. (research use; cite the paper)"
        ),
        attribution=(
            "Mao et al., 'Neural Adaptive Video Streaming with Pensieve', SIGCOMM 2017; "
            "Riiser et al., MMSys 2013 (Norway HSDPA); FCC Measuring Broadband America 2016."
        ),
        files=tuple(TraceFile(*row) for row in PENSIEVE_FILES),
    ),
}


def traces_cache() -> Path:
    """Where fetched trace sets live: <user cache>/traces/<set>/..."""
    return cache_dir() / "traces"


def search_dirs(traces_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """Folders `resolve_trace` searches, in order."""
    dirs = [Path(d) for d in traces_dirs]
    env = os.environ.get(TRACES_DIR_ENV)
    if env:
        dirs += [Path(d) for d in env.split(os.pathsep) if d]
    dirs.append(traces_cache())
    return dirs


def resolve_trace(name_or_path: str | Path, traces_dirs: Sequence[str | Path] = ()) -> Path:
    """The file a trace name or path refers to (see the module docstring)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = str(name_or_path)
    dirs = search_dirs(traces_dirs)
    for d in dirs:
        cand = d / name
        if cand.is_file():
            return cand
    parts = Path(name).parts
    if len(parts) >= 2:
        set_name, base = parts[0], parts[-1]
        for d in dirs:
            root = d / set_name
            if root.is_dir():
                hits = sorted(x for x in root.rglob(base) if x.is_file())
                if len(hits) == 1:
                    return hits[0]
                if len(hits) > 1:
                    raise InputError(
                        f"trace {name!r} is ambiguous under {root}: "
                        + ", ".join(str(h.relative_to(root)) for h in hits)
                    )
    hint = ""
    if parts and parts[0] in SETS:
        hint = f"; run `kvcast traces fetch {parts[0]}` or pass --traces-dir"
    raise InputError(
        f"trace {name!r} not found (looked in: {', '.join(str(d) for d in dirs)}){hint}"
    )


class FetchError(KvcastError):
    """A download failed or a file did not match its checksum."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_cached(ts: TraceSet, f: TraceFile, dest: Path) -> bool:
    """True if the file is in `dest` with the right size and checksum."""
    p = dest / ts.name / f.rel
    return p.is_file() and p.stat().st_size == f.size and _sha256(p) == f.sha256


def fetch_set(
    set_name: str,
    *,
    dest: Path | None = None,
    base_url: str | None = None,
    timeout_s: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download a pinned trace set into `dest` (default: the user cache); returns the files.

    Files already present with the right checksum are kept. A file whose checksum does not
    match is not written, and FetchError names it.
    """
    if set_name not in SETS:
        raise InputError(f"unknown trace set {set_name!r}; expected one of {', '.join(SETS)}")
    ts = SETS[set_name]
    dest = Path(dest) if dest is not None else traces_cache()
    base = base_url or os.environ.get(BASE_URL_ENV) or None
    out: list[Path] = []
    for f in ts.files:
        target = dest / ts.name / f.rel
        if is_cached(ts, f, dest):
            out.append(target)
            if progress:
                progress(f"cached  {ts.name}/{f.rel}")
            continue
        url = f"{base.rstrip('/')}/{ts.name}/{f.rel}" if base else ts.upstream_url(f)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                data = resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"{ts.name}/{f.rel}: download from {url} failed: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != f.size or digest != f.sha256:
            raise FetchError(
                f"{ts.name}/{f.rel}: checksum mismatch for {url}: got {len(data)} bytes, "
                f"sha256 {digest}; expected {f.size} bytes, sha256 {f.sha256}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).replace(target)
        out.append(target)
        if progress:
            progress(f"fetched {ts.name}/{f.rel} ({len(data):,} B)")
    note = dest / ts.name / "SOURCE.md"
    note.write_text(
        f"# {ts.name} traces\n\nSource: github.com/{ts.repo} at commit {ts.commit}.\n"
        f"License: {ts.license}.\nAttribution: {ts.attribution}\n"
        "Fetched by `kvcast traces fetch`; each file's SHA-256 was checked.\n"
    )
    return out


def list_sets(dest: Path | None = None) -> list[dict[str, object]]:
    """For each set: name, source, license, files and how many are in `dest` (the cache)."""
    dest = Path(dest) if dest is not None else traces_cache()
    rows = []
    for ts in SETS.values():
        present = [f for f in ts.files if (dest / ts.name / f.rel).is_file()]
        rows.append(
            {
                "set": ts.name,
                "source": f"github.com/{ts.repo}@{ts.commit[:7]}",
                "format": ts.fmt,
                "license": ts.license,
                "files": [f"{ts.name}/{f.rel}" for f in ts.files],
                "cached": [f"{ts.name}/{f.rel}" for f in present],
                "folder": str(dest / ts.name),
                "bytes": sum(f.size for f in ts.files),
            }
        )
    return rows
