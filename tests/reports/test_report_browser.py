"""The report in a real browser: headless Chromium opens it from a file:// URL.

Checks: no JavaScript console errors, every figure drew, the timeline's menus switch figures.
Screenshots are saved under out/test-artifacts/. Skips with the reason where Chromium is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from report_browser import need_chromium, open_and_check
from report_runs import FakeRun, big_run, write_run

from kvcast.reports import build_report

ALL_FIGURES = [
    "fig-summary",
    "fig-ttft-cdf",
    "fig-quality-ttft",
    "fig-slo-text",
    "fig-cases",
    "fig-timeline",
    "fig-levels",
    "fig-profile",
]

# Pick the last request and the last controller in the timeline's menus, as a user would.
SWITCH_TIMELINE = """
(async () => {
  const r = document.getElementById('tl-request'), c = document.getElementById('tl-controller');
  r.value = String(r.options.length - 1); c.value = String(c.options.length - 1);
  c.dispatchEvent(new Event('change'));
  await KV.showTimeline();
  const gd = document.getElementById('fig-timeline');
  return {title: gd.layout.title.text, controller: c.options[c.selectedIndex].text,
          request: r.options[r.selectedIndex].text, bars: gd.querySelectorAll('.bars .point').length};
})()
"""


# Hover the first chunk bar of the timeline (Plotly's own hover call: bars are small targets).
HOVER_TIMELINE_BAR = """
(async () => {
  const gd = document.getElementById('fig-timeline');
  const k = gd.data.findIndex(t => t.type === 'bar' && t.name !== 'other requests');
  Plotly.Fx.hover(gd, [{curveNumber: k, pointNumber: 0}], 'x2y2');
  await new Promise(r => setTimeout(r, 100));
  const text = gd.querySelector('.hoverlayer').textContent;
  Plotly.Fx.unhover(gd);
  return text;
})()
"""


@pytest.mark.slow
def test_report_in_chromium(tmp_path: Path) -> None:
    need_chromium()
    run = write_run(
        tmp_path / "run",
        FakeRun(
            n_requests=20,
            controllers=("cachegen", "bba", "oracle", "text"),
            cases=(("slo-0.5", 0.5), ("slo-1", 1.0)),
        ),
    )
    page = open_and_check(
        build_report(run),
        ALL_FIGURES,
        "report-small.png",
        scripts=(SWITCH_TIMELINE, HOVER_TIMELINE_BAR),
        hover=("#fig-levels .nsewdrag",),  # the mouse on the first heatmap panel's centre
    )
    switched, bar_hover = page.eval_results
    for text in (bar_hover, page.hovers[0]):
        for word in ("level", "bytes", "transfer", "GPU"):
            assert word in text, f"{word!r} missing from hover label {text!r}"
    assert switched["title"].startswith(switched["controller"] + " · request ")
    request_id = switched["request"].split()[1]
    assert f"request {request_id} " in switched["title"]
    assert switched["bars"] > 0


@pytest.mark.slow
def test_large_report_in_chromium(tmp_path: Path) -> None:
    """The scale check: 10,000 requests x 6 controllers gives under 20 MB and draws fully.

    (Its opening time is measured by `kvcast bench report`, not asserted here.)"""
    need_chromium()
    run = write_run(tmp_path / "run", big_run())
    html = build_report(run)
    assert html.stat().st_size < 20_000_000
    figures = [f for f in ALL_FIGURES if f != "fig-cases"]
    open_and_check(html, figures, "report-10k-x6.png")
