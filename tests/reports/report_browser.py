"""Browser-test helper: open a report in headless Chromium and check what it drew.

Skips (with the reason) where no Chromium is installed; CI installs Debian's `chromium`.
Screenshots are test artifacts under out/test-artifacts/ (git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvcast.reports.browser import PageReport, check_page, find_chromium

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts"


def need_chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium on this machine: install Debian's `chromium` "
            "(apt-get install -y chromium) or set KVCAST_CHROMIUM"
        )
    return path


def open_and_check(
    html: Path,
    expected_ids: list[str],
    screenshot_name: str,
    scripts: tuple[str, ...] = (),
    hover: tuple[str, ...] = (),
) -> PageReport:
    """Open html from a file:// URL; assert no JS errors and that every expected figure drew."""
    need_chromium()
    page = check_page(html, screenshot=ARTIFACTS / screenshot_name, scripts=scripts, hover=hover)
    assert page.errors == [], f"JavaScript errors in {html}: {page.errors}"
    drawn = {f["id"]: f for f in page.figures}
    assert list(drawn) == expected_ids
    for fig_id, fig in drawn.items():
        assert fig["plot_containers"] == 1, f"{fig_id}: no Plotly plot container"
        assert fig["main_svgs"] >= 1, f"{fig_id}: no SVG drawn"
        assert fig["traces"] >= 1, f"{fig_id}: no data"
        assert fig["width"] > 300 and fig["height"] > 150, f"{fig_id}: drawn too small: {fig}"
    assert page.screenshot is not None and page.screenshot.stat().st_size > 10_000
    return page
