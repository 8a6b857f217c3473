"""Report building from run folders (test data written by tests/reports/report_runs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from report_runs import FakeRun, write_run

from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.reports import build_report
from kvcast.reports.fig_levels import MAX_ROWS, level_heatmap
from kvcast.reports.fig_pareto import pareto_front, sample_rows
from kvcast.reports.fig_summary import format_value
from kvcast.reports.fig_timeline import ALL_REQUESTS_LIMIT, TimelineBuilder, pick_requests
from kvcast.reports.fig_ttft import cdf_points, ttft_cdf
from kvcast.reports.run_folder import load_run
from kvcast.reports.style import log_x_toggle

TWO_CASES = FakeRun(
    n_requests=20,
    controllers=("cachegen", "bba", "oracle", "text"),
    cases=(("slo-0.5", 0.5), ("slo-1", 1.0)),
)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "small", TWO_CASES)


@pytest.fixture(scope="module")
def small_report(small_run: Path) -> Path:
    return build_report(small_run)


def test_report_is_one_self_contained_file(small_run: Path, small_report: Path) -> None:
    assert small_report == small_run / "report.html"
    text = small_report.read_text(encoding="utf-8")
    # plotly.js is embedded exactly once, and nothing is fetched from the network.
    assert len(re.findall(r"\* plotly\.js v\d", text)) == 1
    head, rest = text.split('<script type="text/javascript">', 1)
    page = head + rest.split("</script>", 1)[1]  # the page without plotly.js itself
    assert "<script src" not in page and "http" not in page.replace("http-equiv", "")
    ids = re.findall(r'<div id="(fig-[a-z-]+)" class="kv-figure">', text)
    assert ids == [
        "fig-summary",
        "fig-ttft-cdf",
        "fig-quality-ttft",
        "fig-slo-text",
        "fig-cases",
        "fig-timeline",
        "fig-levels",
        "fig-profile",
    ]
    assert text.count('KV.plot("') == len(ids) - 1  # the timeline is drawn by its menus
    # Plotly's default template (~7 KB) is not repeated per figure.
    assert page.count('"template"') == 0


def test_report_is_deterministic(small_run: Path, small_report: Path, tmp_path: Path) -> None:
    again = build_report(small_run, tmp_path / "again.html")
    assert again.read_bytes() == small_report.read_bytes()


def test_single_case_has_no_case_figure(tmp_path: Path) -> None:
    run = write_run(tmp_path / "one", FakeRun(n_requests=5, controllers=("cachegen",)))
    text = build_report(run, tmp_path / "r.html").read_text()
    assert 'id="fig-cases"' not in text and 'id="fig-timeline"' in text


def test_pareto_front_by_hand() -> None:
    ttft = np.array([1.0, 0.5, 2.0, 0.5, 3.0, np.inf, 1.5])
    quality = np.array([0.9, 0.8, 0.95, 0.7, 0.95, 1.0, 0.85])
    # 0.5/0.8 (beats 0.5/0.7), 1.0/0.9, 2.0/0.95; 3.0/0.95 ties in quality but is slower;
    # 1.5/0.85 is beaten by 1.0/0.9; the unfinished request is never on the front.
    assert pareto_front(ttft, quality).tolist() == [1, 0, 2]


def test_sample_rows_keeps_front_and_is_seeded() -> None:
    keep = np.array([3, 7])
    assert sample_rows(5, keep, 10).tolist() == [0, 1, 2, 3, 4]
    a, b = sample_rows(100, keep, 10), sample_rows(100, keep, 10)
    assert a.tolist() == b.tolist() and len(a) == 10 and {3, 7} <= set(a.tolist())


def test_cdf_points_exact_then_quantiles() -> None:
    x, y = cdf_points(np.array([3.0, 1.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 3.0] and np.allclose(y, [1 / 3, 2 / 3, 1])
    data = np.arange(10_000, dtype=float)
    x, y = cdf_points(data, max_points=100)
    assert len(x) == 100 and x[0] == 0 and x[-1] == 9999 and y[-1] == 1.0
    assert np.all(np.diff(x) > 0)


def test_time_axis_starts_log_only_for_long_tails() -> None:
    fig = go.Figure()
    assert log_x_toggle(fig, np.linspace(0.2, 1.0, 100)) == ""
    assert fig.layout.xaxis.type == "linear" and fig.layout.updatemenus[0].active == 0
    note = log_x_toggle(fig, np.geomspace(0.1, 100.0, 1000))
    assert note.startswith("log time axis: TTFTs span") and fig.layout.xaxis.type == "log"
    assert fig.layout.updatemenus[0].active == 1


def test_summary_values_formatted_like_run() -> None:
    assert format_value("ttft_p50_s", 0.12345) == "0.123"
    assert format_value("slo_violation_rate", 0.125) == "12.5%"
    assert format_value("bytes_sent", 2.5e9) == "2.50 GB"
    assert format_value("n_requests", 10000) == "10,000"
    assert format_value("utility_vs_bound", None) == "–"  # a run without the bound


def test_null_utility_vs_bound_accepted(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    summary = json.loads((run / "summary.json").read_text())
    for row in summary["controllers"].values():
        row["utility_vs_bound"] = None
    summary["notes"] = "no oracle in this run"
    (run / "summary.json").write_text(json.dumps(summary))
    text = build_report(run).read_text()
    assert "notes: no oracle in this run" in text


def test_small_run_offers_every_request(small_run: Path) -> None:
    assert ALL_REQUESTS_LIMIT >= 4
    tiny = write_run(small_run.parent / "tiny", FakeRun(n_requests=4, controllers=("bba", "mpc")))
    picks, how = pick_requests(load_run(tiny))
    assert [p.request_id for p in picks] == [0, 1, 2, 3] and how == "all 4 requests"


def test_large_run_offers_worst_median_best(small_run: Path) -> None:
    run = load_run(small_run)
    picks, how = pick_requests(run)
    assert "worst, median and best" in how
    req = run.requests
    for name in run.controllers:
        rows = req[req["controller"] == name]
        late = rows["ttft_s"] - rows["slo_s"]
        worst = rows.loc[late.idxmax()]
        best = rows.loc[late.idxmin()]
        labels = {(p.case, p.request_id): p.reasons for p in picks}
        assert f"worst for {name}" in labels[(worst["case"], int(worst["request_id"]))]
        assert f"best for {name}" in labels[(best["case"], int(best["request_id"]))]
        assert sum(f"median for {name}" in r for r in labels.values()) == 1


def test_timeline_bars_match_chunks(small_run: Path) -> None:
    run = load_run(small_run)
    picks, _ = pick_requests(run)
    fig = go.Figure(TimelineBuilder(run).figure(picks[0], "cachegen", ""))
    req = run.requests.set_index(["case", "controller", "request_id"]).loc[
        (picks[0].case, "cachegen", picks[0].request_id)
    ]
    chunks = run.chunks[
        (run.chunks["case"] == picks[0].case)
        & (run.chunks["controller"] == "cachegen")
        & (run.chunks["request_id"] == picks[0].request_id)
    ]
    bars = [t for t in fig.data if t.type == "bar" and t.name != "other requests"]
    assert {t.name for t in bars} == set(chunks["level"])
    n_link = 0
    for bar in bars:
        part = chunks[chunks["level"] == bar.name]
        n = len(part)
        assert list(bar.y) == ["link"] * n + ["GPU"] * n
        us = {"rtol": 0, "atol": 1e-6}  # the page keeps times to microseconds
        assert np.allclose(bar.base[:n], part["send_start_s"] - req["arrival_s"], **us)
        assert np.allclose(bar.x[:n], part["arrive_s"] - part["send_start_s"], **us)
        assert np.allclose(bar.base[n:], part["gpu_start_s"] - req["arrival_s"], **us)
        assert np.allclose(bar.x[n:], part["gpu_end_s"] - part["gpu_start_s"], **us)
        for word in ("level", "bytes", "transfer", "GPU"):
            assert word in bar.hovertemplate
        n_link += n
    assert n_link == len(chunks)
    deadline = [s for s in fig.layout.shapes if s.line.color == "#d62728"]
    assert deadline and all(s.x0 == req["slo_s"] for s in deadline)


def test_heatmap_full_resolution_then_aggregated(small_run: Path, tmp_path: Path) -> None:
    fig = level_heatmap(load_run(small_run))
    assert "every cell is one chunk" in fig.layout.title.subtitle.text
    assert all(len(t.y) == 2 * TWO_CASES.n_requests for t in fig.data)
    big = write_run(tmp_path / "big", FakeRun(n_requests=2 * MAX_ROWS + 10, controllers=("bba",)))
    run = load_run(big)
    fig = level_heatmap(run)
    assert "aggregated" in fig.layout.title.subtitle.text
    heat = fig.data[0]
    assert len(heat.y) <= MAX_ROWS
    assert len(set(heat.y)) == len(heat.y)  # a category axis would merge equal labels
    assert heat.y[0] == "0 – 2" and heat.y[-1].endswith(str(2 * MAX_ROWS + 9))
    # Row 0 groups requests 0..2: check its chunk-0 cell is their most frequent level.
    chunks = run.chunks[(run.chunks["request_id"] < 3) & (run.chunks["chunk_index"] == 0)]
    counts = chunks["level"].value_counts()
    assert heat.text[0][0] in set(counts[counts == counts.max()].index)


def test_cli_report(small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(small_run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 1_000_000


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "report.html":
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_file_is_named(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    (run / "chunks.parquet").unlink()
    with pytest.raises(InputError, match=r"chunks\.parquet: missing"):
        build_report(run)


def test_missing_column_is_named(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    df = pd.read_parquet(run / "requests.parquet").drop(columns=["ttft_s"])
    df.to_parquet(run / "requests.parquet")
    with pytest.raises(InputError, match=r"requests\.parquet: missing column\(s\) ttft_s"):
        build_report(run)


def test_bad_values_are_named(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    df = pd.read_parquet(run / "chunks.parquet")
    df.loc[3, "gpu_kind"] = "sleep"
    df.to_parquet(run / "chunks.parquet")
    with pytest.raises(InputError, match=r"gpu_kind.*sleep"):
        build_report(run)
    df.loc[3, "gpu_kind"] = "decode"
    df["bytes"] = df["bytes"].astype(str)
    df.to_parquet(run / "chunks.parquet")
    with pytest.raises(InputError, match=r"chunks\.parquet: column 'bytes': expected numbers"):
        build_report(run)


def test_summary_and_traces_checked(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    summary = json.loads((run / "summary.json").read_text())
    del summary["controllers"]["bba"]["text_share"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match=r"controllers\.bba\.text_share is missing"):
        build_report(run)


def test_run_without_trace_samples_plots_chunk_throughput(small_run: Path, tmp_path: Path) -> None:
    """Per-chunk bandwidth links have no trace: the timeline shows achieved throughput."""
    run = _copy(small_run, tmp_path / "r")
    traces = pd.read_parquet(run / "traces.parquet")
    traces[traces["case"] != "slo-1"].to_parquet(run / "traces.parquet")
    data = load_run(run)
    pick = next(p for p in pick_requests(data)[0] if p.case == "slo-1")
    fig = go.Figure(TimelineBuilder(data).figure(pick, "bba", ""))
    assert fig.data[0].name == "per-chunk throughput (no trace samples)"
    chunks = data.chunks[
        (data.chunks["case"] == "slo-1")
        & (data.chunks["controller"] == "bba")
        & (data.chunks["request_id"] == pick.request_id)
    ]
    rate = 8 * chunks["bytes"] / (chunks["arrive_s"] - chunks["send_start_s"])
    unit_scale = 1e9 if rate.max() >= 1e9 else 1e6
    assert np.allclose(np.asarray(fig.data[0].y)[::2], rate / unit_scale, rtol=1e-5)


def test_trace_names_must_agree(small_run: Path, tmp_path: Path) -> None:
    """requests.parquet and traces.parquet name a case's trace alike; a mismatch is an error."""
    run = _copy(small_run, tmp_path / "r")
    traces = pd.read_parquet(run / "traces.parquet")
    traces["trace"] = traces["trace"] + "x579.9"
    traces.to_parquet(run / "traces.parquet")
    with pytest.raises(InputError, match=r"traces\.parquet: case .* names trace"):
        load_run(run)


def test_unfinished_requests_are_counted_not_dropped(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    req = pd.read_parquet(run / "requests.parquet")
    req.loc[(req["controller"] == "bba") & (req["request_id"] < 2), "ttft_s"] = np.inf
    req.to_parquet(run / "requests.parquet")
    data = load_run(run)
    picks, _ = pick_requests(data)
    assert any("worst for bba" in p.reasons and p.request_id < 2 for p in picks)
    fig = ttft_cdf(data)
    assert "bba: 4 request(s) never got a first token" in fig.layout.title.subtitle.text
    bba = next(t for t in fig.data if t.name == "bba")
    assert np.isclose(max(bba.y), 1 - 4 / len(req[req["controller"] == "bba"]))
    build_report(run)


def test_names_cannot_break_out_of_the_page(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "r")
    evil = "w</script><script>alert(1)</script><!--"
    for table in ("requests", "traces"):
        df = pd.read_parquet(run / f"{table}.parquet")
        df["trace"] = evil
        df.to_parquet(run / f"{table}.parquet")
    text = build_report(run).read_text()
    assert "alert(1)</script>" not in text and "<!--" not in text.split("</head>", 1)[1]
    assert "alert(1)" in text  # still there, as escaped data


def test_cli_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_long_window_bandwidth_is_rebinned_exactly() -> None:
    """A window with more samples than a figure shows is re-binned; the bits carried stay."""
    from kvcast.reports.fig_timeline import BANDWIDTH_POINTS, _bandwidth

    rng = np.random.default_rng(0)
    t = np.arange(20_000) * 0.005
    bw = rng.uniform(1e8, 1e9, len(t))
    t0, t1 = 3.0021, 97.5
    got_t, got_bw = _bandwidth(pd.DataFrame({"t_s": t, "bandwidth_bps": bw}), t0, t1)
    assert len(got_t) == BANDWIDTH_POINTS and got_t[0] == t0
    grid = np.append(got_t, t1)
    fine = np.clip(np.append(t, np.inf), t0, t1)
    want_bits = np.sum(bw * np.diff(fine))
    assert np.sum(got_bw * np.diff(grid)) == pytest.approx(want_bits, rel=1e-12)
    # a short window keeps its samples as they are
    short_t, short_bw = _bandwidth(pd.DataFrame({"t_s": t, "bandwidth_bps": bw}), 3.0012, 3.9988)
    assert len(short_t) == 200 and np.array_equal(short_bw, bw[600:800])


def test_bench_report_without_chromium_fails_unless_told_to_time_the_build_only(
    small_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvcast.cli import main
    from kvcast.reports import browser

    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    out = str(tmp_path / "r.html")
    assert main(["bench", "report", str(small_run), "-o", out]) == 2
    assert "no Chromium found" in capsys.readouterr().err
    assert main(["bench", "report", str(small_run), "-o", out, "--no-browser"]) == 0
    assert "not opened (--no-browser)" in capsys.readouterr().out


def test_profile_curve_says_what_a_reduction_level_sends(small_run: Path, tmp_path: Path) -> None:
    from kvcast.reports.fig_profile import profile_curve
    from kvcast.reports.run_folder import load_run

    run = _copy(small_run, tmp_path / "r")
    prof = json.loads((run / "profile.json").read_text())
    level = dict(prof["levels"][0], name="lingua-50", kind="reduction", payload="text")
    prof["levels"].append({**level, "tokens_kept": 0.5})
    (run / "profile.json").write_text(json.dumps(prof))
    fig = profile_curve(load_run(run))
    hover = [h for trace in fig.data for h in (trace.hovertext or ())]
    assert "context reduction: sends pruned text, 50% of the tokens" in hover
    assert prof["levels"][0]["kind"] in hover
