"""Where kvcast keeps generated output and caches (never inside the source tree's packages)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache folder: $KVCAST_CACHE, else $XDG_CACHE_HOME/kvcast, else ~/.cache/kvcast."""
    env = os.environ.get("KVCAST_CACHE")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "kvcast"
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir() -> Path:
    """Default folder for runs and reports: $KVCAST_OUT, else ./out (git-ignored)."""
    path = Path(os.environ.get("KVCAST_OUT", "out"))
    path.mkdir(parents=True, exist_ok=True)
    return path
