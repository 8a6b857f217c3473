"""The run folder's schema, for its writer (kvcast.sim) and its reader (kvcast.reports): the
files, the columns of each table with their kinds, the summary's per-controller fields
(docs/contracts.md, "A run folder"). `write_run_files` is the one place that writes a folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from kvcast.errors import InputError

REPORT_FILE = "report.html"  # written by kvcast.reports beside the data
RUN_FILES = (
    "scenario.yaml",
    "summary.json",
    "requests.parquet",
    "chunks.parquet",
    "traces.parquet",
    "profile.json",
)
SUMMARY_FIELDS = (
    "ttft_p50_s",
    "ttft_p95_s",
    "slo_violation_rate",
    "mean_quality",
    "mean_utility",
    "bytes_sent",
    "text_share",
    "utility_vs_bound",
    "n_requests",
)
# Fields that may be null: utility_vs_bound when the run had no bound (or it scored 0).
NULLABLE_SUMMARY_FIELDS = ("utility_vs_bound",)

# column -> kind ("str", "int", "float", "bool") the report needs from each table.
REQUEST_COLUMNS = {
    "case": "str",
    "controller": "str",
    "request_id": "int",
    "arrival_s": "float",
    "slo_s": "float",
    "ttft_s": "float",
    "met_slo": "bool",
    "quality": "float",
    "utility": "float",
    "bytes_sent": "float",
    "n_chunks": "int",
    "n_text": "int",
    "trace": "str",
}
CHUNK_COLUMNS = {
    "case": "str",
    "controller": "str",
    "request_id": "int",
    "chunk_index": "int",
    "level": "str",
    "tokens": "int",
    "bytes": "float",
    "send_start_s": "float",
    "arrive_s": "float",
    "gpu_start_s": "float",
    "gpu_end_s": "float",
    "gpu_kind": "str",
    "quality": "float",
    "est_bandwidth_bps": "float",
    "est_ttft_s": "float",
    "p_on_time": "float",
}
# Columns where NaN means "none": a controller without an estimate (and ttft_s, historically).
NAN_ALLOWED = ("ttft_s", "est_bandwidth_bps", "est_ttft_s", "p_on_time")
TRACE_COLUMNS = {"case": "str", "trace": "str", "t_s": "float", "bandwidth_bps": "float"}
# skipped / dropped: an importance-first part the receiver no longer needed, queued / arriving
GPU_KINDS = ("decode", "prefill", "skipped", "dropped")
# Optional, beside an emulated run (`kvcast emulate --compare`): the simulator replaying the
# emulation's choices, per chunk and per request (kvcast.emulation.fidelity).
FIDELITY_CHUNKS = "fidelity_chunks.parquet"
FIDELITY_REQUESTS = "fidelity_requests.parquet"
FIDELITY_CHUNK_COLUMNS = {
    "case": "str",
    "trace": "str",
    "controller": "str",
    "request_id": "int",
    "chunk_index": "int",
    "emulated_transfer_s": "float",
    "simulated_transfer_s": "float",
    "transfer_error": "float",
}
FIDELITY_REQUEST_COLUMNS = {
    "case": "str",
    "trace": "str",
    "controller": "str",
    "request_id": "int",
    "emulated_ttft_s": "float",
    "simulated_ttft_s": "float",
    "ttft_error": "float",
}


def staging_dir(run_dir: Path) -> Path:
    """Where a run folder is assembled (and a sweep keeps its finished units' parts) until it
    is complete: the sibling `.<name>.partial`."""
    return run_dir.with_name(f".{run_dir.name}.partial")


def _check_columns(name: str, present: Iterable[str], columns: dict[str, str]) -> None:
    missing = [c for c in columns if c not in set(present)]
    if missing:
        raise ValueError(f"{name} table lacks run-folder column(s) {', '.join(missing)}")


def _write_table_parts(path: Path, tables: Iterable[pa.Table]) -> None:
    """One Parquet file from tables read one at a time (a study's chunk rows never sit in memory
    together); every table is cast to the first one's schema."""
    writer: pq.ParquetWriter | None = None
    try:
        for table in tables:
            if writer is None:
                _check_columns("chunks", table.column_names, CHUNK_COLUMNS)
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("chunks: no table to write")


def write_run_files(
    run_dir: Path,
    *,
    scenario: dict[str, Any],
    summary: dict[str, Any],
    requests: pd.DataFrame,
    chunks: pd.DataFrame | Iterable[pa.Table],
    traces: pd.DataFrame,
    profile: dict[str, Any],
) -> Path:
    """Write every file of a run folder; the tables must hold at least the schema's columns.
    `chunks`: a table, or Arrow tables to be written one after another (streamed).

    All or nothing: the files are written into the staging folder (`staging_dir`) and moved in
    at the end, so an interrupted write never leaves a folder that looks complete; the staging
    folder (and any parts a sweep kept there) is then removed. Rewriting an existing run folder
    replaces its data and removes its report (now stale)."""
    for name, frame, columns in (
        ("requests", requests, REQUEST_COLUMNS),
        ("traces", traces, TRACE_COLUMNS),
    ):
        _check_columns(name, frame.columns, columns)
    if isinstance(chunks, pd.DataFrame):
        _check_columns("chunks", chunks.columns, CHUNK_COLUMNS)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a folder")
    partial = staging_dir(run_dir)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "scenario.yaml").write_text(
        yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8"
    )
    (partial / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    requests.to_parquet(partial / "requests.parquet", index=False)
    if isinstance(chunks, pd.DataFrame):
        chunks.to_parquet(partial / "chunks.parquet", index=False)
    else:
        _write_table_parts(partial / "chunks.parquet", chunks)
    traces.to_parquet(partial / "traces.parquet", index=False)
    (partial / "profile.json").write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
    for extra in partial.iterdir():  # e.g. a sweep's parts, now in the tables
        if extra.name in RUN_FILES:
            continue
        if extra.is_dir():  # renamed first, so no half-removed parts folder is ever resumed from
            gone = extra
            if not extra.name.endswith(".removing"):
                gone = extra.with_name(f".{extra.name}.removing")
                shutil.rmtree(gone, ignore_errors=True)
                extra.rename(gone)
            shutil.rmtree(gone)
        else:
            extra.unlink()
    if not run_dir.exists():
        partial.rename(run_dir)
        return run_dir
    for name in (*RUN_FILES, REPORT_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FILES:
        (partial / name).replace(run_dir / name)
    partial.rmdir()
    return run_dir


def write_fidelity_files(run_dir: Path, chunks: pd.DataFrame, requests: pd.DataFrame) -> None:
    """Add the fidelity tables to a written run folder (each file complete or absent)."""
    _check_columns("fidelity chunks", chunks.columns, FIDELITY_CHUNK_COLUMNS)
    _check_columns("fidelity requests", requests.columns, FIDELITY_REQUEST_COLUMNS)
    for name, frame in ((FIDELITY_CHUNKS, chunks), (FIDELITY_REQUESTS, requests)):
        tmp = run_dir / f".{name}.partial"
        frame.to_parquet(tmp, index=False)
        tmp.replace(run_dir / name)
