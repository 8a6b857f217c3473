"""`kvcast compare`: several scenarios (or controller lists) on the same seeds, side by side.

With one scenario this is `kvcast run` with a different controller list. With several, each runs
with the same seeds (`--seed`, or each scenario's own) and the tables are merged into one run
folder whose controllers and cases are named `<scenario>/<controller>` and `<scenario>/case-<n>`; each scenario's utility_vs_bound is
against its own bound (oracle). scenario.yaml then holds `{compare: [resolved scenario, ...]}`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pandas as pd

from kvcast.errors import InputError


def compare(args: argparse.Namespace) -> int:
    import yaml

    from kvcast.codec.profile_format import profile_to_dict

    from .cli import _controllers, _default_dir, _override, _report
    from .runner import format_table, run_scenario, write_run
    from .scenario import load_scenario

    scenarios = [
        _override(load_scenario(s), _controllers(args.controllers), args.seed, args.profile)
        for s in args.scenarios
    ]
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise InputError(f"compare: scenario names must differ (got {', '.join(names)})")
    results = [run_scenario(sc, progress=not args.quiet) for sc in scenarios]
    if len(results) == 1:
        res = results[0]
        run_dir = write_run(res, args.out or _default_dir(f"compare-{res.scenario.name}"))
        print(format_table(res.summary["controllers"]))
        print(f"run folder: {run_dir}")
        _report(run_dir, args.no_report)
        return 0

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
    run_dir = args.out or _default_dir("compare-" + "-".join(names))
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.concat(
        [prefixed(r.requests, r.scenario.name) for r in results], ignore_index=True
    ).to_parquet(run_dir / "requests.parquet", index=False)
    pd.concat([prefixed(r.chunks, r.scenario.name) for r in results], ignore_index=True).to_parquet(
        run_dir / "chunks.parquet", index=False
    )
    pd.concat([prefixed(r.traces, r.scenario.name) for r in results], ignore_index=True).to_parquet(
        run_dir / "traces.parquet", index=False
    )
    (run_dir / "scenario.yaml").write_text(
        yaml.safe_dump({"compare": [r.scenario.to_dict() for r in results]}, sort_keys=False),
        encoding="utf-8",
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (run_dir / "profile.json").write_text(
        json.dumps(profile_to_dict(first.profile), indent=2) + "\n", encoding="utf-8"
    )
    print(format_table(merged_ctrl))
    print(f"run folder: {run_dir}")
    _report(run_dir, args.no_report)
    return 0
