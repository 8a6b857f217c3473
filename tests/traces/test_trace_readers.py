"""Readers: every format, detection, and clear errors (file:line + what was expected)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvcast.errors import InputError
from kvcast.traces.readers import TraceFormatError, detect_format, load_trace


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_all_shared_traces_load_with_the_documented_means(traces_dir):
    # Means from the reference table (1500 B per mahimahi line).
    expect = {
        "mahimahi/ATT-LTE-driving.down": 5.17,
        "mahimahi/Verizon-EVDO-driving.up": 0.84,
        "pensieve/fcc_train/trace_207336_http---www.amazon.com": 2.18,
        "pensieve/norway_train/ferry.nesoddtangen-oslo-report.2010-09-20_1542CEST.log": 1.69,
    }
    for rel, mbps in expect.items():
        tr = load_trace(traces_dir / rel)
        assert tr.mean_bps() / 1e6 == pytest.approx(mbps, abs=0.006), rel
    assert detect_format(traces_dir / "mahimahi" / "ATT-LTE-driving.up") == "mahimahi"
    assert detect_format(traces_dir / "pensieve/fcc_train/trace_5294_http---www.youtube.com") == (
        "cooked"
    )


def test_cooked_step_semantics_by_hand(tmp_path):
    # Row i's rate holds over (t[i-1], t[i]]: row 0's rate is never used.
    p = write(tmp_path, "c.txt", "0.0\t99\n1.0\t8\n3.0\t0\n4.0\t16\n")
    tr = load_trace(p)
    assert detect_format(p) == "cooked"
    assert tr.duration_s == 4.0
    assert tr.bytes_between(0, 1) == pytest.approx(1e6)
    assert tr.bytes_between(1, 3) == 0
    assert tr.bytes_between(3, 4) == pytest.approx(2e6)
    assert tr.finish_time(2e6, 0.5) == pytest.approx(3.75)
    shifted = load_trace(write(tmp_path, "s.txt", "10 1\n11 8\n13 8\n"))
    assert shifted.duration_s == 3.0 and shifted.bytes_between(0, 1) == pytest.approx(1e6)


def test_sabre_json(tmp_path):
    data = [
        {"duration_ms": 1000, "bandwidth_kbps": 8000, "latency_ms": 20},
        {"duration_ms": 500, "bandwidth_kbps": 0, "latency_ms": 100},
    ]
    p = write(tmp_path, "net.json", json.dumps(data))
    tr = load_trace(p)
    assert tr.duration_s == 1.5 and tr.bytes_between(0, 1.5) == pytest.approx(1e6)
    assert tr.latency_at(0.5) == 0.02 and tr.latency_at(1.2) == 0.1
    assert tr.latency_at(1.5 + 0.1) == 0.02  # loops
    assert detect_format(write(tmp_path, "net.txt", json.dumps(data))) == "sabre"


def test_csv_with_header_and_end(tmp_path):
    p = write(tmp_path, "bw.csv", "time_s,mbps\n0,8\n2,16\n")
    tr = load_trace(p)
    assert tr.duration_s == 4.0  # the last row lasts as long as the one before it
    assert tr.bytes_between(0, 2) == pytest.approx(2e6)
    assert tr.bytes_between(2, 4) == pytest.approx(4e6)
    tr2 = load_trace(p, end_s=3.0)
    assert tr2.duration_s == 3.0
    one = write(tmp_path, "one.csv", "0,8\n")
    with pytest.raises(InputError, match="end_s"):
        load_trace(one)
    assert load_trace(one, end_s=5).period_bytes == pytest.approx(5e6)


@pytest.mark.parametrize(
    ("name", "text", "fmt", "match"),
    [
        ("a.down", "", None, r"a\.down: empty file"),
        ("b.down", "1\n2\n\n3\n", None, r"b\.down:3: empty line"),
        ("c.down", "1\n2\nx7\n", None, r"c\.down:3: 'x7': expected a non-negative integer"),
        ("d.down", "1\n5\n4\n", None, r"d\.down:3: timestamp 4 < previous 5"),
        ("e.down", "0\n0\n", None, r"e\.down:2: the last timestamp must be > 0"),
        ("f.down", "1\n-2\n", None, r"f\.down:2: '-2': expected a non-negative integer"),
        ("g.txt", "0 1\n1\n", "cooked", r"g\.txt:2: '1': expected two numbers"),
        ("h.txt", "0 1\n1 abc\n", "cooked", r"h\.txt:2: .*expected two numbers"),
        ("i.txt", "0 1\n2 1\n1 1\n", "cooked", r"i\.txt:3: time 1.0 is not after"),
        ("j.txt", "0 1\n1 -1\n", "cooked", r"j\.txt:2: negative bandwidth"),
        ("k.txt", "0 1\n", "cooked", r"k\.txt:1: need at least two rows"),
        ("l.csv", "time_s,mbps\n0,1\n1;2\n", None, r"l\.csv:3: '1;2': expected 'time_s,mbps'"),
        ("m.csv", "1,1\n2,2\n", None, r"m\.csv:1: first time is 1.0; expected 0"),
        ("n.json", '[{"duration_ms": 1,\n "bandwidth_kbps": }]', None, r"n\.json:2: invalid JSON"),
        ("o.json", '[{"duration_ms": 1000}]', None, r"o\.json: entry 0: missing field"),
        ("p.json", '[{"duration_ms": -1, "bandwidth_kbps": 1}]', None, r"must be >= 0"),
        ("q.json", "{}", None, r"q\.json: expected a non-empty JSON list"),
        ("r.dat", "hello world again\n", None, r"r\.dat:1: .*unknown trace format"),
    ],
)
def test_malformed_files_fail_with_file_line_and_expectation(tmp_path, name, text, fmt, match):
    p = write(tmp_path, name, text)
    with pytest.raises(TraceFormatError, match=match):
        load_trace(p, fmt)


def test_missing_file_unknown_format_and_bad_option(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_trace(tmp_path / "nope.down")
    p = write(tmp_path, "t.down", "1\n2\n")
    with pytest.raises(InputError, match="unknown trace format 'ns3'"):
        load_trace(p, "ns3")
    with pytest.raises(InputError, match="bad option"):
        load_trace(p, "mahimahi", end_s=3)
    with pytest.raises(InputError, match="bytes_per_opportunity"):
        load_trace(p, bytes_per_opportunity=0)
    binary = tmp_path / "bin.down"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceFormatError, match="not a text file"):
        load_trace(binary)


def test_crlf_and_no_final_newline(tmp_path):
    tr = load_trace(write(tmp_path, "w.down", "1\r\n2\r\n4"))
    assert tr.duration_s == 0.004 and tr.period_bytes == 4500
    assert np.isclose(tr.finish_time(3000, 0.0), 0.002)
