"""`kvcast traces fetch` against a local HTTP server serving the shared traces; name resolution."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.traces.catalog import SETS, FetchError, fetch_set, resolve_trace


@pytest.fixture()
def serve():
    """serve(folder) -> base URL of an http.server on 127.0.0.1 for that folder."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVCAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KVCAST_TRACES_DIR", raising=False)
    monkeypatch.delenv("KVCAST_TRACES_BASE_URL", raising=False)
    return tmp_path / "cache"


def test_fetch_both_sets_verify_and_resolve(traces_dir, serve, cache, capsys):
    base = serve(traces_dir)
    assert main(["traces", "fetch", "mahimahi", "--base-url", base]) == 0
    files = fetch_set("pensieve", base_url=base)
    assert len(files) == len(SETS["pensieve"].files)
    out = capsys.readouterr().out
    assert "fetched mahimahi/ATT-LTE-driving.down" in out
    got = cache / "traces" / "mahimahi" / "ATT-LTE-driving.down"
    assert got.read_bytes() == (traces_dir / "mahimahi" / "ATT-LTE-driving.down").read_bytes()
    assert "GPL-3+" in (cache / "traces" / "mahimahi" / "SOURCE.md").read_text()
    # Names resolve into the cache; a unique file name within a set works too.
    assert resolve_trace("mahimahi/ATT-LTE-driving.down") == got
    yt = resolve_trace("pensieve/trace_5294_http---www.youtube.com")
    assert yt.parent.name == "fcc_train"
    # A second fetch keeps the verified files (no server needed).
    assert main(["traces", "fetch", "mahimahi", "--base-url", "http://127.0.0.1:9"]) == 0
    assert "cached  mahimahi/ATT-LTE-driving.down" in capsys.readouterr().out
    assert main(["traces", "list"]) == 0
    assert "10/10 fetched" in capsys.readouterr().out


def test_fetch_rejects_a_tampered_file(traces_dir, serve, tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(traces_dir / "pensieve", mirror / "pensieve")
    bad = mirror / "pensieve" / "fcc_train" / "trace_10322_http---edition.cnn.com"
    bad.write_text(bad.read_text().replace("0.890992", "0.890993"))
    monkeypatch.setenv("KVCAST_TRACES_BASE_URL", serve(mirror))
    with pytest.raises(FetchError, match="trace_10322_http---edition.cnn.com: checksum mismatch"):
        fetch_set("pensieve")
    assert not (cache / "traces" / "pensieve" / "fcc_train" / bad.name).exists()


def test_fetch_reports_unreachable_server_and_unknown_set(cache):
    with pytest.raises(FetchError, match="download from http://127.0.0.1:9/mahimahi/"):
        fetch_set("mahimahi", base_url="http://127.0.0.1:9", timeout_s=5)
    with pytest.raises(InputError, match="unknown trace set"):
        fetch_set("puffer")


def test_resolve_order_and_errors(traces_dir, cache, tmp_path, monkeypatch):
    p = resolve_trace("mahimahi/ATT-LTE-driving.up", [traces_dir])
    assert p == traces_dir / "mahimahi" / "ATT-LTE-driving.up"
    monkeypatch.setenv("KVCAST_TRACES_DIR", str(traces_dir))
    assert resolve_trace(
        "pensieve/norway_train/bus.ljansbakken-oslo-report.2010-09-28_1407CEST.log"
    )
    f = tmp_path / "mine.csv"
    f.write_text("0,1\n1,2\n")
    assert resolve_trace(str(f)) == f
    with pytest.raises(InputError, match="kvcast traces fetch mahimahi"):
        resolve_trace("mahimahi/Verizon-LTE-short.down")
