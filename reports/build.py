"""Build the report: read the run folder, make every figure, write one HTML file."""

from __future__ import annotations

from pathlib import Path

from kvcast.errors import InputError
from kvcast.reports.fig_fidelity import fidelity
from kvcast.reports.fig_levels import level_heatmap
from kvcast.reports.fig_pareto import quality_vs_ttft
from kvcast.reports.fig_profile import profile_curve
from kvcast.reports.fig_slo import per_case_heatmaps, slo_and_text
from kvcast.reports.fig_summary import summary_table
from kvcast.reports.fig_timeline import TimelineSet, timelines
from kvcast.reports.fig_ttft import ttft_cdf
from kvcast.reports.page import Section, page_facts, render_page
from kvcast.reports.run_folder import RunData, load_run
from kvcast.run_schema import REPORT_FILE


def _scenario_name(run: RunData) -> str:
    name = run.summary.get("scenario")
    if isinstance(name, str) and name:
        return name
    for key in ("name", "scenario"):
        if isinstance(run.scenario.get(key), str):
            return run.scenario[key]
    return run.run_dir.name


def report_sections(run: RunData) -> tuple[list[Section], TimelineSet]:
    """Every figure of the report, in page order (ids are what the browser test checks)."""
    tl = timelines(run)
    sections = [
        Section(
            "fig-summary",
            "Summary",
            "The figures `kvcast run` printed, per controller.",
            summary_table(run),
        ),
        Section(
            "fig-ttft-cdf",
            "Time to first token",
            "Share of requests whose first token came within a given time; dashed: the SLO.",
            ttft_cdf(run),
        ),
        Section(
            "fig-quality-ttft",
            "Quality against TTFT",
            "One dot per request; the line through each controller's best trade-offs is its "
            "Pareto front. Up and left is better.",
            quality_vs_ttft(run),
        ),
        Section(
            "fig-slo-text",
            "SLO violations and TEXT fallback",
            "How often each controller missed the deadline, and how much it recomputed instead "
            "of fetching.",
            slo_and_text(run),
        ),
    ]
    if run.fidelity_chunks is not None:
        sections.append(
            Section(
                "fig-fidelity",
                "Simulation against emulation",
                "This run was emulated over real sockets (docs/emulation.md); each point is the "
                "same chunk or request, emulated and simulated (the simulator replaying the "
                "emulation's choices, with the receiver work the emulation measured).",
                fidelity(run),
            )
        )
    if len(run.cases) > 1:
        sections.append(
            Section(
                "fig-cases",
                "Per case",
                f"The run swept {len(run.cases)} cases; each row is one.",
                per_case_heatmaps(run),
            )
        )
    sections += [
        Section(
            "fig-timeline",
            "One request, step by step",
            f"Pick a request and a controller. Requests offered: {tl.how}. Hover a bar for its "
            "chunk's level, bytes, transfer and GPU times.",
        ),
        Section(
            "fig-levels",
            "Level choices",
            "Which level each controller chose for every chunk (TEXT: recomputed).",
            level_heatmap(run),
        ),
        Section(
            "fig-profile",
            "Codec profile",
            "What each level costs (bits per KV element) and keeps (quality), from profile.json.",
            profile_curve(run),
        ),
    ]
    return sections, tl


def build_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the report of RUN_DIR to out_path (default RUN_DIR/report.html); return its path."""
    run = load_run(run_dir)
    out = Path(out_path) if out_path is not None else run.run_dir / REPORT_FILE
    if out.is_dir():
        raise InputError(f"{out}: is a folder; expected the path of the HTML file to write")
    sections, tl = report_sections(run)
    title = f"kvcast report: {_scenario_name(run)}"
    facts = page_facts(run.summary, str(run.run_dir), len(run.requests), len(run.cases))
    text = render_page(title, facts, sections, tl, run.scenario_text)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
