"""Where finished units' rows are kept until the run folder is written: in memory, or as Parquet
parts in a folder (a study's rows then never sit in memory together, and an interrupted study
resumes without redoing the units whose parts are there).

A part folder holds `run.json` (what the rows were computed for: kvcast's version, the resolved
scenario, the controllers, the codec profile) and, per finished unit, `<unit>.chunks.parquet`
then `<unit>.requests.parquet`, each written under a temporary name and renamed when complete:
a unit is finished when both are there. Parts of a different run are never mixed in: a folder
whose `run.json` differs is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kvcast.errors import InputError

from .units import UNIT_META_KEY, Unit, UnitResult

RUN_MARKER = "run.json"


def _figures(meta: dict[bytes, bytes] | None) -> dict[str, Any]:
    return json.loads((meta or {})[UNIT_META_KEY])


class MemoryParts:
    """Finished units' rows in memory (as their compressed Parquet bytes)."""

    def __init__(self) -> None:
        self._results: dict[Unit, UnitResult] = {}

    def finished(self, units: Sequence[Unit]) -> set[Unit]:
        return set(self._results).intersection(units)

    def put(self, result: UnitResult) -> None:
        self._results[result.unit] = result

    def requests(self, unit: Unit) -> pa.Table:
        return pq.read_table(pa.BufferReader(self._results[unit].requests))

    def chunks(self, unit: Unit) -> pa.Table:
        return pq.read_table(pa.BufferReader(self._results[unit].chunks))

    def figures(self, unit: Unit) -> dict[str, Any]:
        r = self._results[unit]
        return {"n_requests": r.n_requests, "decisions": r.decisions, "wall_s": r.wall_s}

    @property
    def where(self) -> str | None:
        return None


class DiskParts:
    """Finished units' rows as Parquet parts in `folder` (see the module's docstring)."""

    def __init__(self, folder: Path, identity: dict[str, Any], controllers: Sequence[str]) -> None:
        self.folder = folder
        self._controller_index = {name: i for i, name in enumerate(controllers)}
        marker = folder / RUN_MARKER
        if marker.exists():
            if json.loads(marker.read_text(encoding="utf-8")) != identity:
                raise InputError(
                    f"{folder}: holds the finished units of a different run (another scenario, "
                    "controller list, codec profile, traces or kvcast version); remove that "
                    "folder or choose another --out"
                )
        elif folder.is_dir() and any(folder.glob("*.parquet")):
            raise InputError(
                f"{folder}: holds parts but no {RUN_MARKER} saying what run they belong to; "
                "remove that folder or choose another --out"
            )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(marker, (json.dumps(identity, indent=1) + "\n").encode())

    def _stem(self, unit: Unit) -> str:
        return f"case-{unit[0]:06d}.controller-{self._controller_index[unit[1]]:03d}"

    def finished(self, units: Sequence[Unit]) -> set[Unit]:
        return {
            u
            for u in units
            if (self.folder / f"{self._stem(u)}.requests.parquet").exists()
            and (self.folder / f"{self._stem(u)}.chunks.parquet").exists()
        }

    def put(self, result: UnitResult) -> None:
        stem = self._stem(result.unit)
        _write_atomic(self.folder / f"{stem}.chunks.parquet", result.chunks)
        _write_atomic(self.folder / f"{stem}.requests.parquet", result.requests)

    def _read(self, unit: Unit, table: str, read: Any) -> Any:
        path = self.folder / f"{self._stem(unit)}.{table}.parquet"
        try:
            return read(path)
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise InputError(
                f"{path}: a damaged part ({exc}); remove it (its unit is then simulated again) "
                f"or the folder {self.folder}"
            ) from None

    def requests(self, unit: Unit) -> pa.Table:
        return self._read(unit, "requests", pq.read_table)

    def chunks(self, unit: Unit) -> pa.Table:
        return self._read(unit, "chunks", pq.read_table)

    def figures(self, unit: Unit) -> dict[str, Any]:
        return self._read(unit, "requests", lambda p: _figures(pq.read_schema(p).metadata))

    @property
    def where(self) -> str | None:
        return str(self.folder)


def _write_atomic(path: Path, data: bytes) -> None:
    """Written under a temporary name, flushed to disk, then renamed: a part that is there is
    whole, even after a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


Parts = MemoryParts | DiskParts


def chunk_tables(parts: Parts, units: Sequence[Unit]) -> Iterator[pa.Table]:
    """Each unit's chunk rows, in the units' order (read one at a time)."""
    for unit in units:
        yield parts.chunks(unit)


def request_table(parts: Parts, units: Sequence[Unit]) -> pa.Table:
    """Every unit's request rows, in the units' order."""
    return pa.concat_tables([parts.requests(u) for u in units])
