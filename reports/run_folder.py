"""Read and check a run folder (docs/contracts.md, "A run folder") so figures can trust it.

A report is rebuilt from the folder alone, so every file and column a figure uses is checked
here once, with errors that name the file and column and say what was expected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from kvcast.errors import InputError
from kvcast.run_schema import (
    CHUNK_COLUMNS,
    FIDELITY_CHUNK_COLUMNS,
    FIDELITY_CHUNKS,
    FIDELITY_REQUEST_COLUMNS,
    FIDELITY_REQUESTS,
    GPU_KINDS,
    NAN_ALLOWED,
    NULLABLE_SUMMARY_FIELDS,
    REQUEST_COLUMNS,
    SUMMARY_FIELDS,
    TRACE_COLUMNS,
)

__all__ = ["RunData", "load_run"]


@dataclass
class RunData:
    """Everything a report shows, read from one run folder."""

    run_dir: Path
    scenario: dict[str, Any]
    scenario_text: str
    summary: dict[str, Any]
    requests: pd.DataFrame
    chunks: pd.DataFrame
    traces: pd.DataFrame
    profile: dict[str, Any]
    # an emulated run compared with the simulator (`kvcast emulate --compare`); else None
    fidelity_chunks: pd.DataFrame | None = None
    fidelity_requests: pd.DataFrame | None = None

    @property
    def controllers(self) -> list[str]:
        """Controllers in the order summary.json lists them (the order `kvcast run` printed)."""
        return list(self.summary["controllers"])

    @property
    def cases(self) -> list[str]:
        return sorted(self.requests["case"].unique().tolist(), key=_natural_key)


def _natural_key(text: str) -> tuple:
    """Sort "case-2" before "case-10"."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _need(path: Path) -> Path:
    if not path.is_file():
        raise InputError(
            f"{path}: missing; a run folder holds scenario.yaml, summary.json, requests.parquet, "
            "chunks.parquet, traces.parquet and profile.json (docs/contracts.md)"
        )
    return path


def _read_table(path: Path, columns: dict[str, str], categories: bool = False) -> pd.DataFrame:
    """The table's columns the report uses (others are not read), each checked and converted.
    A study's chunk table has millions of rows: it is read a column at a time, nothing is
    copied that need not be, and with `categories` its text columns (a few distinct values
    each) are read as categories."""
    try:
        schema = pq.read_schema(_need(path))
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)}; expected at least "
                f"{', '.join(columns)}"
            )
        read: dict[str, pd.Series] = {}
        for name, kind in columns.items():  # one column at a time: never the file twice over
            as_category = [name] if categories and kind == "str" else None
            column = pq.read_table(path, columns=[name], read_dictionary=as_category).column(0)
            read[name] = column.to_pandas()
            del column
            pa.default_memory_pool().release_unused()
        frame = pd.DataFrame(read, copy=False)
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    for name, kind in columns.items():
        frame[name] = _coerce(path, name, kind, frame[name])
    return frame


def _coerce(path: Path, name: str, kind: str, col: pd.Series) -> pd.Series:
    where = f"{path}: column {name!r}"
    if kind == "str":
        if col.isna().any():
            raise InputError(f"{where}: empty value in row {int(col.isna().to_numpy().argmax())}")
        if isinstance(col.dtype, pd.CategoricalDtype):
            return col.cat.rename_categories(col.cat.categories.astype(str))
        return col.astype(str)
    if kind == "bool":
        if pd.api.types.is_bool_dtype(col):
            return col.astype(bool)
        if pd.api.types.is_integer_dtype(col) and col.isin([0, 1]).all():
            return col.astype(bool)
        raise InputError(f"{where}: expected booleans, found dtype {col.dtype}")
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise InputError(f"{where}: expected numbers, found dtype {col.dtype}")
    values = col.to_numpy(dtype=np.float64)
    if kind == "int":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(bad.argmax())
            raise InputError(f"{where}: expected whole numbers, row {row} holds {values[row]!r}")
        return col.astype(np.int64)
    if np.isnan(values).any() and name not in NAN_ALLOWED:
        raise InputError(f"{where}: NaN in row {int(np.isnan(values).argmax())}")
    return col.astype(np.float64)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_need(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    return data


def _check_summary(path: Path, summary: dict[str, Any]) -> None:
    ctrls = summary.get("controllers")
    if not isinstance(ctrls, dict) or not ctrls:
        raise InputError(f"{path}: field 'controllers' must be a non-empty object of controllers")
    for name, row in ctrls.items():
        if not isinstance(row, dict):
            raise InputError(f"{path}: controllers.{name} must be an object")
        for field in SUMMARY_FIELDS:
            if field not in row:
                raise InputError(f"{path}: controllers.{name}.{field} is missing")
            value = row[field]
            if value is None and field in NULLABLE_SUMMARY_FIELDS:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InputError(
                    f"{path}: controllers.{name}.{field} must be a number, found {value!r}"
                )


def _check_profile(path: Path, profile: dict[str, Any]) -> None:
    levels = profile.get("levels")
    if not isinstance(levels, list) or not levels:
        raise InputError(f"{path}: field 'levels' must be a non-empty list")
    for i, level in enumerate(levels):
        where = f"{path}: levels[{i}]"
        if not isinstance(level, dict) or not isinstance(level.get("name"), str):
            raise InputError(f"{where}: expected an object with a string 'name'")
        bpe = level.get("bits_per_element")
        if not isinstance(bpe, dict) or not isinstance(bpe.get("mean"), (int, float)):
            raise InputError(f"{where} ({level['name']}): bits_per_element.mean must be a number")
        quality = level.get("quality")
        if not isinstance(quality, dict) or not isinstance(quality.get("normalized"), (int, float)):
            raise InputError(f"{where} ({level['name']}): quality.normalized must be a number")


def _check_consistency(run_dir: Path, data: RunData) -> None:
    req_ctrls = set(data.requests["controller"].unique())
    summary_ctrls = set(data.controllers)
    if req_ctrls != summary_ctrls:
        raise InputError(
            f"{run_dir}: controllers in requests.parquet {sorted(req_ctrls)} differ from "
            f"summary.json {sorted(summary_ctrls)}"
        )
    unknown = set(data.chunks["controller"].unique()) - req_ctrls
    if unknown:
        raise InputError(
            f"{run_dir / 'chunks.parquet'}: controller(s) {sorted(unknown)} have no requests "
            "in requests.parquet"
        )
    sampled = set(zip(data.traces["case"], data.traces["trace"], strict=True))
    sampled_cases = {case for case, _ in sampled}
    pairs = data.requests[["case", "trace"]].drop_duplicates()
    for case, trace in zip(pairs["case"], pairs["trace"], strict=True):
        if case in sampled_cases and (case, trace) not in sampled:
            names = sorted(t for c, t in sampled if c == case)
            raise InputError(
                f"{run_dir / 'traces.parquet'}: case {case!r} has samples of trace(s) {names} "
                f"but requests.parquet names trace {trace!r}; the names must be the same"
            )
    kinds = set(data.chunks["gpu_kind"].unique()) - set(GPU_KINDS)
    if kinds:
        raise InputError(
            f"{run_dir / 'chunks.parquet'}: column 'gpu_kind' holds {sorted(kinds)}; "
            f"expected one of {GPU_KINDS}"
        )


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder and check the fields the report uses; raise InputError otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder; expected a run folder written by `kvcast run`")
    scenario_path = _need(run_dir / "scenario.yaml")
    scenario_text = scenario_path.read_text(encoding="utf-8")
    try:
        scenario = yaml.safe_load(scenario_text)
    except yaml.YAMLError as exc:
        raise InputError(f"{scenario_path}: invalid YAML ({exc})") from exc
    if not isinstance(scenario, dict):
        raise InputError(f"{scenario_path}: expected a mapping at the top level")
    summary = _read_json(run_dir / "summary.json")
    _check_summary(run_dir / "summary.json", summary)
    profile = _read_json(run_dir / "profile.json")
    _check_profile(run_dir / "profile.json", profile)
    data = RunData(
        run_dir=run_dir,
        scenario=scenario,
        scenario_text=scenario_text,
        summary=summary,
        requests=_read_table(run_dir / "requests.parquet", REQUEST_COLUMNS),
        chunks=_read_table(run_dir / "chunks.parquet", CHUNK_COLUMNS, categories=True),
        traces=_read_table(run_dir / "traces.parquet", TRACE_COLUMNS),
        profile=profile,
    )
    if (run_dir / FIDELITY_CHUNKS).is_file() or (run_dir / FIDELITY_REQUESTS).is_file():
        data.fidelity_chunks = _read_table(run_dir / FIDELITY_CHUNKS, FIDELITY_CHUNK_COLUMNS)
        data.fidelity_requests = _read_table(run_dir / FIDELITY_REQUESTS, FIDELITY_REQUEST_COLUMNS)
    for name, table in (("requests", data.requests), ("chunks", data.chunks)):
        if table.empty:
            raise InputError(f"{run_dir / (name + '.parquet')}: no rows; expected the run's {name}")
    _check_consistency(run_dir, data)
    return data
