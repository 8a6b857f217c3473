"""kvcast.reports: interactive Plotly reports rebuilt from a run folder alone.

`build_report(run_dir)` reads the folder `kvcast run` writes (docs/contracts.md) and writes one
self-contained HTML file (docs/reports.md describes every figure).
"""

from __future__ import annotations

from kvcast.reports.build import build_report, report_sections

__all__ = ["build_report", "report_sections"]
