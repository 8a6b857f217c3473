"""How far the simulator is from the emulation: the same requests, the same chunk choices.

For every emulated (case, controller), the simulator replays the levels the controller chose in
emulation (a `Replay` controller: same bytes per chunk) on the same requests, so the two differ
only by what the simulator models. Per chunk: transfer time (first byte sent to last byte
received). Per request, TTFT three ways:
- `ttft_error`: the simulator's link and pipeline model, the receiver's work (each chunk's, the
  first-token step's) taken as the emulation measured it: the simulator's own error;
- `ttft_error_costed`: the receiver work from the chunk-cost file as `kvcast run` uses it
  (decode timed alone, on every core): adds the error of that input;
- `ttft_error_no_ack`: as the first, without `link.ack_delay_s` (the simulator's default, the
  sender learning of an arrival at once), which shows what that option corrects.

Errors are relative: (simulated - emulated) / emulated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kvcast.controllers.base import TEXT, Decision, Observation
from kvcast.run_schema import write_fidelity_files
from kvcast.sim.costs import RequestCosts
from kvcast.sim.engine import simulate
from kvcast.sim.inputs import build_setup, case_inputs
from kvcast.sim.runner import RunResult

BOUND = "oracle"


class Replay:
    """Sends each chunk at the level a plan gives: {(request_id, chunk_index): level}."""

    name = "replay"

    def __init__(self, plan: dict[tuple[int, int], str]) -> None:
        self.plan = plan

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        return Decision(self.plan[(obs.request_id, obs.chunk_index)])


@dataclass
class Fidelity:
    chunks: pd.DataFrame  # per chunk: emulated and simulated transfer time, errors
    requests: pd.DataFrame  # per request: emulated and simulated TTFT, errors
    table: pd.DataFrame  # per trace (and "all"): median and p95 of the absolute errors


def compare(emulated: RunResult, chunk_costs: Any) -> Fidelity:
    """Replay every emulated unit in the simulator (see the module's docstring)."""
    sc = emulated.scenario
    setup = build_setup(sc, chunk_costs)
    cases = sc.cases()
    chunks = emulated.chunks
    reqs = emulated.requests
    chunk_rows, request_rows = [], []
    for i, name in emulated.units:
        if name == BOUND:
            continue
        case = cases[i]
        ci = case_inputs(sc, setup, case)
        ch = chunks[(chunks.case == case.label) & (chunks.controller == name)]
        rq = reqs[(reqs.case == case.label) & (reqs.controller == name)].set_index("request_id")
        plan = {
            (int(r), int(c)): lv
            for r, c, lv in zip(ch.request_id, ch.chunk_index, ch.level, strict=True)
        }
        measured = _with_measured_work(ci.costs, ch, rq)
        sims = {
            label: simulate(
                ci.requests,
                costs,
                Replay(plan),
                ci.make_path,
                setup.ladder,
                sc.workload.per_chunk_overhead_s,
                sc.objective,
                ack_delay_s=ack,
            )
            for label, costs, ack in (
                ("sim", measured, sc.link.ack_delay_s),
                ("costed", ci.costs, sc.link.ack_delay_s),
                ("no_ack", measured, 0.0),
            )
        }
        sim_chunks = {(c.request_id, c.chunk_index): c for c in sims["sim"].chunks}
        for row in ch.itertuples(index=False):
            s = sim_chunks[(row.request_id, row.chunk_index)]
            chunk_rows.append(
                {
                    "case": case.label,
                    "trace": case.trace_name,
                    "controller": name,
                    "request_id": row.request_id,
                    "chunk_index": row.chunk_index,
                    "level": row.level,
                    "bytes": row.bytes,
                    "emulated_transfer_s": row.arrive_s - row.send_start_s,
                    "simulated_transfer_s": s.arrive_s - s.send_start_s,
                }
            )
        ttft = {k: {r.request_id: r.ttft_s for r in v.requests} for k, v in sims.items()}
        for rid in ttft["sim"]:
            request_rows.append(
                {
                    "case": case.label,
                    "trace": case.trace_name,
                    "controller": name,
                    "request_id": rid,
                    "emulated_ttft_s": float(rq.loc[rid, "ttft_s"]),
                    "simulated_ttft_s": ttft["sim"][rid],
                    "simulated_costed_ttft_s": ttft["costed"][rid],
                    "simulated_no_ack_ttft_s": ttft["no_ack"][rid],
                }
            )
    ch_df = pd.DataFrame(chunk_rows)
    rq_df = pd.DataFrame(request_rows)
    if not ch_df.empty:
        ch_df["transfer_error"] = _rel(ch_df.simulated_transfer_s, ch_df.emulated_transfer_s)
    if not rq_df.empty:
        emu = rq_df.emulated_ttft_s
        rq_df["ttft_error"] = _rel(rq_df.simulated_ttft_s, emu)
        rq_df["ttft_error_costed"] = _rel(rq_df.simulated_costed_ttft_s, emu)
        rq_df["ttft_error_no_ack"] = _rel(rq_df.simulated_no_ack_ttft_s, emu)
    return Fidelity(ch_df, rq_df, fidelity_table(ch_df, rq_df))


def _with_measured_work(
    costs: list[RequestCosts], chunks: pd.DataFrame, requests: pd.DataFrame
) -> list[RequestCosts]:
    """The requests' costs with the receiver work as the emulation measured it: each sent
    chunk's (its GPU lane's start to end, at the level it was sent) and the first-token step's
    (from the last chunk's end to the first token)."""
    sent = {
        (int(r), int(c)): (lv, float(e - s))
        for r, c, lv, s, e in zip(
            chunks.request_id,
            chunks.chunk_index,
            chunks.level,
            chunks.gpu_start_s,
            chunks.gpu_end_s,
            strict=True,
        )
    }
    # the lane is serial: a first-token step starts when the job before it ends (a chunk's, or
    # another request's step, whose end is that request's first token)
    token = (requests.arrival_s + requests.ttft_s).to_dict()  # request_id -> first token
    ends = np.sort(np.concatenate([chunks.gpu_end_s.to_numpy(), list(token.values())]))
    out = []
    for rid, rc in enumerate(costs):
        decode = {lv: list(v) for lv, v in rc.decode_s.items()}
        text = list(rc.text_s)
        for i in range(rc.n_chunks):
            lv, work = sent[(rid, i)]
            if lv == TEXT:
                text[i] = work
            else:
                decode[lv][i] = work
        before = ends[ends < token[rid] - 1e-9]
        step = float(token[rid] - before[-1]) if before.size else 0.0
        decode_s = {lv: tuple(v) for lv, v in decode.items()}
        out.append(replace(rc, decode_s=decode_s, text_s=tuple(text), decode_step_s=step))
    return out


def _rel(sim: pd.Series, emu: pd.Series) -> pd.Series:
    return (sim - emu) / emu


def fidelity_table(chunks: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """Per trace and over all: chunks and requests compared, median and p95 |error|."""
    rows = []
    groups = [("all", chunks, requests)]
    if not chunks.empty:
        for trace in sorted(chunks.trace.unique()):
            groups.append((trace, chunks[chunks.trace == trace], requests[requests.trace == trace]))
    for label, ch, rq in groups:
        if ch.empty:
            continue
        te = ch.transfer_error.abs()
        ee = rq.ttft_error.abs()
        na = rq.ttft_error_no_ack.abs()
        co = rq.ttft_error_costed.abs()
        rows.append(
            {
                "trace": label,
                "chunks": len(ch),
                "transfer_median": float(te.median()),
                "transfer_p95": float(np.percentile(te, 95)),
                "requests": len(rq),
                "ttft_median": float(ee.median()),
                "ttft_p95": float(np.percentile(ee, 95)),
                "ttft_median_costed": float(co.median()),
                "ttft_median_no_ack": float(na.median()),
                "mean_transfer_s": float(ch.emulated_transfer_s.mean()),
                # emulated minus simulated: the host's own cost per chunk (sockets, wake-ups)
                "extra_ms_median": 1e3
                * float((ch.emulated_transfer_s - ch.simulated_transfer_s).median()),
            }
        )
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The fidelity table as text (errors in percent)."""
    lines = [
        f"{'trace':<34} {'chunks':>6} {'xfer med':>9} {'xfer p95':>9} {'reqs':>5} "
        f"{'TTFT med':>9} {'TTFT p95':>9} {'costed med':>10} {'no-ack med':>10} {'extra ms':>8}"
    ]
    for r in table.itertuples(index=False):
        lines.append(
            f"{str(r.trace)[:34]:<34} {r.chunks:>6} {100 * r.transfer_median:>8.2f}% "
            f"{100 * r.transfer_p95:>8.2f}% {r.requests:>5} {100 * r.ttft_median:>8.2f}% "
            f"{100 * r.ttft_p95:>8.2f}% {100 * r.ttft_median_costed:>9.2f}% "
            f"{100 * r.ttft_median_no_ack:>9.2f}% {r.extra_ms_median:>8.2f}"
        )
    return "\n".join(lines)


def write_fidelity(run_dir: Path, fid: Fidelity) -> None:
    """The per-chunk and per-request comparison beside the run (the report shows them)."""
    write_fidelity_files(run_dir, fid.chunks, fid.requests)
