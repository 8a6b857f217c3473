"""`kvcast traces show`, `kvcast bench link` (small), and trace specs for scenarios."""

from __future__ import annotations

import json
import re

import pytest

from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.traces.spec import build_trace


def test_traces_show_prints_stats_and_writes_plot(traces_dir, tmp_path, capsys):
    out = tmp_path / "plot.html"
    rc = main(
        [
            "traces", "show", "mahimahi/ATT-LTE-driving-2016.down",
            "--traces-dir", str(traces_dir), "--below", "1", "--below", "4", "-o", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "120.002 s per period" in text and "mean 4.560 Mb/s" in text
    assert "below 1 Mb/s" in text and "below 4 Mb/s" in text
    html = out.read_text()
    assert "plotly" in html and "ATT-LTE-driving-2016.down" in html
    # opens offline: plotly.js is embedded, nothing is loaded from the web
    tags = re.findall(r"<script\b[^>]*>", html)
    assert tags and not [t for t in tags if "src=" in t], tags
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # the plotly.js bundle is inside


def test_traces_show_bad_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.down"
    bad.write_text("5\n3\n")
    assert main(["traces", "show", str(bad), "--no-plot"]) == 2
    assert "bad.down:2: timestamp 3 < previous 5" in capsys.readouterr().err


def test_bench_link_small_run_checks_answers(tmp_path, capsys):
    rc = main(
        ["bench", "link", "--queries", "30000", "--loop-queries", "40", "--link-transfers", "300"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{") :])
    assert res["mismatches"] == 0 and res["queries"] == 30000
    assert res["per_packet_loop_queries_timed"] == 40
    assert 999.0 < res["period_s"] <= 1000.0


def test_build_trace_specs(traces_dir):
    a = build_trace("mahimahi/ATT-LTE-driving-2016.down", [traces_dir])
    b = build_trace(
        {"file": "mahimahi/ATT-LTE-driving-2016.down", "scale": 1000, "offset_s": 10},
        [traces_dir],
    )
    assert b.mean_bps() == pytest.approx(a.mean_bps() * 1000)
    assert b.bytes_between(0, 5) == pytest.approx(1000 * a.bytes_between(10, 15))
    s = build_trace({"synthetic": "gauss_markov", "seed": 3, "duration_s": 50})
    assert s.duration_s == 50 and s.name == "gauss-markov-s3"
    mm = build_trace({"synthetic": "constant", "mbps": 12, "duration_s": 1,
                      "mahimahi_bytes_per_opportunity": 1500})  # fmt: skip
    assert mm.kind == "packets" and mm.mean_bps() == pytest.approx(12e6)
    cat = build_trace(
        {"concat": [{"synthetic": "constant", "mbps": 8, "duration_s": 1},
                    {"synthetic": "constant", "mbps": 0, "duration_s": 1}], "loop": False}
    )  # fmt: skip
    assert cat.duration_s == 2 and not cat.loop
    with pytest.raises(InputError, match=r"trace: unknown key\(s\) \['bogus'\]"):
        build_trace({"synthetic": "constant", "mbps": 1, "bogus": 2})
    with pytest.raises(InputError, match="needs a 'seed'"):
        build_trace({"synthetic": "markov"})
    with pytest.raises(InputError, match="exactly one of"):
        build_trace({"scale": 2})
    with pytest.raises(InputError, match=r"trace.scale: expected a number"):
        build_trace({"synthetic": "constant", "mbps": 1, "scale": "x"})
