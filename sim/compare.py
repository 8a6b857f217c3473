"""`kvcast compare`: several scenarios (or controller lists) on the same seeds, side by side.

With one scenario this is `kvcast run` with a different controller list. With several, each runs
with the same seeds (`--seed`, or each scenario's own) and the tables are merged into one run
folder whose controllers and cases are named `<scenario>/<controller>` and `<scenario>/case-<n>`; each scenario's utility_vs_bound is
against its own bound (oracle). scenario.yaml then holds `{compare: [resolved scenario, ...]}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from kvcast.errors import InputError
from kvcast.profile_format import profile_to_dict
from kvcast.run_schema import write_run_files

from .runner import RunResult


def check_distinct_names(names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise InputError(f"compare: scenario names must differ (got {', '.join(names)})")


def write_comparison(results: Sequence[RunResult], run_dir: Path) -> dict[str, Any]:
    """Merge several scenarios' results into one run folder; returns the merged per-controller
    summary (the table's rows), controllers named `<scenario>/<controller>`."""
    names = [r.scenario.name for r in results]
    check_distinct_names(names)

    def prefixed(df: pd.DataFrame, sc_name: str) -> pd.DataFrame:
        out = df.copy()
        for col in ("controller", "case"):
            if col in out:
                out[col] = sc_name + "/" + out[col].astype(str)
        return out

    merged_ctrl: dict[str, Any] = {}
    merged_cases: list[dict[str, Any]] = []
    for res in results:
        for k, v in res.summary["controllers"].items():
            merged_ctrl[f"{res.scenario.name}/{k}"] = v
        for c in res.summary["cases"]:
            merged_cases.append(
                {
                    **c,
                    "case": f"{res.scenario.name}/{c['case']}",
                    "scenario": res.scenario.name,
                    "controllers": {
                        f"{res.scenario.name}/{k}": v for k, v in c["controllers"].items()
                    },
                }
            )
    first = results[0]
    summary = {
        "kvcast_version": first.summary["kvcast_version"],
        "scenario": "compare:" + ",".join(names),
        "seed": first.summary["seed"],
        "controllers": merged_ctrl,
        "cases": merged_cases,
        "objective": first.summary["objective"],
        "notes": first.summary["notes"],
        "compared_scenarios": names,
    }
    write_run_files(
        run_dir,
        scenario={"compare": [r.scenario.to_dict() for r in results]},
        summary=summary,
        requests=pd.concat([prefixed(r.requests, r.scenario.name) for r in results]),
        chunks=(
            pa.Table.from_pandas(prefixed(t.to_pandas(), r.scenario.name), preserve_index=False)
            for r in results
            for t in r.chunk_tables()
        ),
        traces=pd.concat([prefixed(r.traces, r.scenario.name) for r in results]),
        profile=profile_to_dict(first.profile),
    )
    return merged_ctrl
