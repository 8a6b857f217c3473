"""Assemble figures into one self-contained HTML page (plotly.js embedded once, no network).

Figures are embedded as JSON (numpy arrays as Plotly's compact base64 typed arrays) without
their template; the page carries one shared template. The timeline keeps one figure per
(request, controller) pair and two menus swap them with Plotly.react.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from kvcast.reports.fig_timeline import TimelineSet
from kvcast.reports.style import template

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0; background: #f3f4f6; color: #222; }
header { background: #27324a; color: white; padding: 16px 28px; }
header h1 { margin: 0 0 6px 0; font-size: 22px; }
header p { margin: 2px 0; font-size: 13px; color: #d5dae5; }
main { max-width: 1400px; margin: 0 auto; padding: 12px 20px 40px; }
section { background: white; margin: 14px 0; padding: 10px 14px; border-radius: 6px;
          box-shadow: 0 1px 3px rgba(0,0,0,0.12); }
section h2 { font-size: 16px; margin: 4px 0 4px 4px; }
section p.note { font-size: 13px; color: #555; margin: 2px 4px 8px; }
.controls { margin: 4px 4px 8px; font-size: 13px; }
.controls label { margin-right: 18px; }
.controls select { font-size: 13px; padding: 2px 4px; max-width: 640px; }
pre { font-size: 12px; background: #f7f7f7; padding: 8px; overflow-x: auto; }
"""


@dataclass
class Section:
    """One figure of the page: its element id, heading and a sentence on how to read it."""

    fig_id: str
    heading: str
    note: str
    figure: go.Figure | None = None  # None: the timeline, drawn from TimelineSet


def _fig_json(fig: go.Figure | dict[str, Any]) -> str:
    spec = fig.to_plotly_json() if isinstance(fig, go.Figure) else dict(fig)
    spec["layout"] = dict(spec["layout"])
    spec["layout"].pop("template", None)
    return _script_safe(to_json_plotly({"data": spec["data"], "layout": spec["layout"]}))


def _script_safe(text: str) -> str:
    """JSON placed inside <script> must not close or comment the script: every "<" (which JSON
    only has inside strings) becomes the equivalent escape \\u003c."""
    return text.replace("<", "\\u003c")


def _timeline_html(tl: TimelineSet) -> str:
    req_opts = "".join(
        f'<option value="{i}">{html.escape(p.label(tl.many_cases))}</option>'
        for i, p in enumerate(tl.picks)
    )
    ctrl_opts = "".join(
        f'<option value="{j}">{html.escape(c)}</option>' for j, c in enumerate(tl.controllers)
    )
    return (
        '<div class="controls">'
        f'<label>Request <select id="tl-request">{req_opts}</select></label>'
        f'<label>Controller <select id="tl-controller">{ctrl_opts}</select></label>'
        "</div>"
    )


def _timeline_script(tl: TimelineSet) -> str:
    specs = ",".join(f'"{key}":{_fig_json(fig)}' for key, fig in tl.figures.items())
    return (
        f"KV.timelineSpecs = {{{specs}}};\n"
        "KV.showTimeline = function () {\n"
        "  const key = document.getElementById('tl-request').value + '/' +\n"
        "    document.getElementById('tl-controller').value;\n"
        "  const fig = KV.timelineSpecs[key];\n"
        "  return Plotly.react('fig-timeline', fig.data,\n"
        "    Object.assign({}, fig.layout, {template: KV.template}), KV.config);\n"
        "};\n"
        "for (const id of ['tl-request', 'tl-controller']) {\n"
        "  document.getElementById(id).addEventListener('change', KV.showTimeline);\n"
        "}\n"
        "const tlStart = performance.now();\n"
        "KV.pending.push(KV.showTimeline());\n"
        "KV.timings['fig-timeline'] = performance.now() - tlStart;\n"
    )


def render_page(
    title: str, facts: list[str], sections: list[Section], timeline: TimelineSet, scenario: str
) -> str:
    """The full HTML text of the report."""
    tmpl = _script_safe(json.dumps(template().to_plotly_json()))
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "<script>\nconst KV = {template: " + tmpl + ", config: {responsive: true, "
        "displaylogo: false}, pending: [], timings: {plotlyjs: performance.now()}};\n"
        "KV.plot = function (id, fig) {\n"
        "  const t0 = performance.now();\n"
        "  KV.pending.push(Plotly.newPlot(id, fig.data,\n"
        "    Object.assign({}, fig.layout, {template: KV.template}), KV.config));\n"
        "  KV.timings[id] = performance.now() - t0;\n"
        "};\n</script>",
        "</head><body>",
        f"<header><h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(f)}</p>" for f in facts),
        "</header><main>",
    ]
    scripts: list[str] = []
    for sec in sections:
        parts.append(f'<section id="sec-{sec.fig_id}"><h2>{html.escape(sec.heading)}</h2>')
        parts.append(f'<p class="note">{html.escape(sec.note)}</p>')
        if sec.figure is None:
            parts.append(_timeline_html(timeline))
        parts.append(f'<div id="{sec.fig_id}" class="kv-figure"></div></section>')
        if sec.figure is None:
            scripts.append(_timeline_script(timeline))
        else:
            scripts.append(f'KV.plot("{sec.fig_id}", {_fig_json(sec.figure)});')
    parts.append(
        "<section><details><summary>scenario.yaml (the fully resolved scenario)</summary>"
        f"<pre>{html.escape(scenario)}</pre></details></section>"
    )
    parts.append("</main>")
    parts.append("<script>\n" + "\n".join(scripts) + "\n")
    parts.append(
        "Promise.all(KV.pending).then(function () {\n"
        "  KV.readyMs = performance.now();\n"
        "  document.body.setAttribute('data-ready', '1');\n"
        "});\n</script></body></html>\n"
    )
    return "".join(parts)


def page_facts(summary: dict[str, Any], run_dir: str, n_requests: int, cases: int) -> list[str]:
    """Header lines: where the run is, what produced it, and the run's own notes."""
    facts = [
        f"run folder: {run_dir}",
        f"kvcast {summary.get('kvcast_version', '?')} · seed {summary.get('seed', '?')} · "
        f"{cases} case(s) · {n_requests:,} request rows · built from the run folder alone",
    ]
    objective = summary.get("objective")
    if isinstance(objective, dict) and isinstance(objective.get("rule"), str):
        facts.append(f"objective: {objective['rule']}")
    for key in ("receiver", "notes"):
        if isinstance(summary.get(key), str) and summary[key]:
            facts.append(f"{key}: {summary[key]}")
    emulation = summary.get("emulation")
    if isinstance(emulation, dict):
        facts.append(
            f"EMULATED over real sockets (dilation {emulation.get('dilation', '?')}): "
            f"{emulation.get('receiver', '')}; bound: {emulation.get('bound', '')}"
        )
    warnings = summary.get("warnings")
    if isinstance(warnings, list):
        facts.extend(f"warning: {w}" for w in warnings if isinstance(w, str))
    return facts
