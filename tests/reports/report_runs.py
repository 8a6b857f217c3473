"""TEST DATA: writes run folders in the format of docs/contracts.md ("A run folder").

The report tests need run folders before (and independently of) the simulator. This module
fabricates self-consistent ones: a seeded step-function bandwidth trace per case; per
controller a fixed distribution over levels; chunks sent back to back, each arriving when the
trace has delivered its bytes; the GPU decoding (or prefilling TEXT chunks) after arrival.
It is not the simulator and its numbers mean nothing beyond being consistent test data.

Run as a script to write a large folder for `kvcast bench report`:
    python tests/reports/report_runs.py out/test-run-10k --requests 10000 --controllers 6
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

LEVELS = (  # name, kind, bits per element, normalized quality
    ("int8", "baseline", 8.3, 0.998),
    ("cg-hi", "cachegen", 4.1, 0.995),
    ("cg-mid", "cachegen", 3.0, 0.988),
    ("cg-default", "cachegen", 2.3, 0.981),
    ("cg-low", "cachegen", 1.6, 0.955),
    ("cg-min", "cachegen", 1.1, 0.91),
)
# Controllers and their level mix (weights over the LEVELS above, then TEXT).
CONTROLLER_MIX = {
    "cachegen": (0, 2, 4, 4, 2, 1, 0.4),
    "bba": (0, 1, 3, 3, 3, 2, 0.2),
    "mpc": (0, 3, 3, 2, 2, 1, 0.3),
    "fixed:cg-default": (0, 0, 0, 1, 0, 0, 0),
    "text": (0, 0, 0, 0, 0, 0, 1),
    "oracle": (0, 4, 3, 2, 1, 0, 0.2),
    "int8": (1, 0, 0, 0, 0, 0, 0),
    "raw": (0, 1, 0, 0, 0, 0, 0),
}
KV_ELEMENTS_PER_TOKEN = 2 * 32 * 8 * 128  # a Llama-3.1-8B-shaped cache
CHUNK_TOKENS = 1500
TRACE_STEP_S = 0.05
DECODE_BYTES_PER_S = 4e9
PREFILL_TOKENS_PER_S = 30_000.0
DECODE_STEP_S = 0.02


@dataclass
class FakeRun:
    """Parameters of a fabricated run folder."""

    n_requests: int = 8
    controllers: tuple[str, ...] = ("cachegen", "bba", "oracle")
    cases: tuple[tuple[str, float], ...] = (("case-0", 0.5),)  # (case name, SLO seconds)
    max_chunks: int = 6
    mean_gap_s: float = 0.6
    seed: int = 0


def _trace(rng: np.random.Generator, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A step trace: bandwidth held for TRACE_STEP_S, random walk between 0.3 and 10 Gbit/s."""
    n = int(np.ceil(horizon_s / TRACE_STEP_S)) + 1
    # Mean-reverting in log space (an AR(1) walk), so it neither saturates nor drifts away.
    noise = rng.normal(0, 0.35, n)
    log_bw = np.empty(n)
    log_bw[0] = 0.0
    for i in range(1, n):
        log_bw[i] = 0.9 * log_bw[i - 1] + noise[i]
    bw = np.clip(2.5e9 * np.exp(log_bw), 0.2e9, 10e9)
    return np.arange(n) * TRACE_STEP_S, bw


def _simulate_case(cfg: FakeRun, case: str, slo: float, case_idx: int):
    rng = np.random.default_rng([cfg.seed, case_idx])
    n = cfg.n_requests
    arrival = np.cumsum(rng.exponential(cfg.mean_gap_s, n))
    n_chunks = rng.integers(2, cfg.max_chunks + 1, n)
    last_tokens = rng.integers(200, CHUNK_TOKENS + 1, n)
    t, bw = _trace(rng, float(arrival[-1]) + 60.0)
    cum = np.concatenate([[0.0], np.cumsum(bw[:-1] / 8 * TRACE_STEP_S)])  # bytes by t
    names = [lv[0] for lv in LEVELS] + ["TEXT"]
    bpe = np.array([lv[2] for lv in LEVELS] + [0.0])
    qual = np.array([lv[3] for lv in LEVELS] + [1.0])
    req_rows, chunk_rows = [], []
    for ctrl in cfg.controllers:
        weights = np.asarray(CONTROLLER_MIX[ctrl], dtype=float)
        crng = np.random.default_rng([cfg.seed, case_idx, len(ctrl), sum(map(ord, ctrl))])
        choice = crng.choice(len(names), size=(n, cfg.max_chunks), p=weights / weights.sum())
        send = arrival.copy()
        gpu_free = arrival.copy()
        for k in range(cfg.max_chunks):
            live = k < n_chunks
            tokens = np.where(k == n_chunks - 1, last_tokens, CHUNK_TOKENS)
            lvl = choice[:, k]
            is_text = lvl == len(LEVELS)
            nbytes = np.where(
                is_text, 4.0 * tokens, np.round(bpe[lvl] * tokens * KV_ELEMENTS_PER_TOKEN / 8)
            )
            arrive = np.interp(np.interp(send, t, cum) + nbytes, cum, t)
            gpu_time = np.where(is_text, tokens / PREFILL_TOKENS_PER_S, nbytes / DECODE_BYTES_PER_S)
            gpu_start = np.maximum(arrive, gpu_free)
            gpu_end = gpu_start + gpu_time
            idx = np.flatnonzero(live)
            chunk_rows.append(
                pd.DataFrame(
                    {
                        "case": case,
                        "controller": ctrl,
                        "request_id": idx,
                        "chunk_index": k,
                        "level": np.asarray(names, dtype=object)[lvl[idx]],
                        "tokens": tokens[idx],
                        "bytes": nbytes[idx].astype(np.int64),
                        "send_start_s": send[idx],
                        "arrive_s": arrive[idx],
                        "gpu_start_s": gpu_start[idx],
                        "gpu_end_s": gpu_end[idx],
                        "gpu_kind": np.where(is_text[idx], "prefill", "decode"),
                        "quality": qual[lvl[idx]],
                        "est_bandwidth_bps": np.interp(send[idx], t, bw),
                        "est_ttft_s": np.nan,
                        "p_on_time": np.nan,
                    }
                )
            )
            send = np.where(live, arrive, send)
            gpu_free = np.where(live, gpu_end, gpu_free)
        ttft = gpu_free + DECODE_STEP_S - arrival
        mine = pd.concat(
            [c for c in chunk_rows if c["controller"].iat[0] == ctrl and c["case"].iat[0] == case]
        )
        per_req = mine.groupby("request_id").agg(
            quality=("quality", "mean"),
            bytes_sent=("bytes", "sum"),
            n_text=("level", lambda s: int((s == "TEXT").sum())),
        )
        req_rows.append(
            pd.DataFrame(
                {
                    "case": case,
                    "controller": ctrl,
                    "request_id": np.arange(n),
                    "arrival_s": arrival,
                    "slo_s": slo,
                    "ttft_s": ttft,
                    "met_slo": ttft <= slo,
                    "quality": per_req["quality"].to_numpy(),
                    "utility": np.where(ttft <= slo, per_req["quality"].to_numpy(), 0.0),
                    "bytes_sent": per_req["bytes_sent"].to_numpy(),
                    "n_chunks": n_chunks,
                    "n_text": per_req["n_text"].to_numpy(),
                    "trace": f"synthetic-walk-{case_idx}",
                    "slo": slo,  # the swept parameter
                }
            )
        )
    traces = pd.DataFrame(
        {"case": case, "trace": f"synthetic-walk-{case_idx}", "t_s": t, "bandwidth_bps": bw}
    )
    return pd.concat(req_rows), pd.concat(chunk_rows), traces


def _summary(cfg: FakeRun, requests: pd.DataFrame, chunks: pd.DataFrame) -> dict:
    best = requests.groupby("controller")["utility"].mean().max()
    ctrls = {}
    for ctrl in cfg.controllers:
        r = requests[requests["controller"] == ctrl]
        c = chunks[chunks["controller"] == ctrl]
        ctrls[ctrl] = {
            "ttft_p50_s": float(np.percentile(r["ttft_s"], 50)),
            "ttft_p95_s": float(np.percentile(r["ttft_s"], 95)),
            "slo_violation_rate": float(1 - r["met_slo"].mean()),
            "mean_quality": float(r["quality"].mean()),
            "mean_utility": float(r["utility"].mean()),
            "bytes_sent": float(r["bytes_sent"].mean()),  # per request, as `kvcast run`
            "bytes_sent_total": int(r["bytes_sent"].sum()),
            "text_share": float((c["level"] == "TEXT").mean()),
            "utility_vs_bound": float(r["utility"].mean() / best) if best else None,
            "n_requests": len(r),
        }
    return {
        "kvcast_version": "0.1.0",
        "scenario": "test-data",
        "seed": cfg.seed,
        "controllers": ctrls,
        "cases": [{"case": c, "slo_s": s} for c, s in cfg.cases],
    }


def _profile() -> dict:
    levels = []
    for name, kind, bits, quality in LEVELS:
        samples = [round(bits * f, 4) for f in (0.9, 0.97, 1.0, 1.03, 1.1)]
        levels.append(
            {
                "name": name,
                "kind": kind,
                "bits_per_element": {
                    "mean": bits,
                    "p5": samples[0],
                    "p50": bits,
                    "p95": samples[-1],
                    "samples": samples,
                },
                "quality": {"normalized": quality, "per_chunk": []},
                "rel_l2_error": {"k": 0.01, "v": 0.01},
                "encode_melem_per_s": 100.0,
                "decode_melem_per_s": 400.0,
            }
        )
    return {
        "format": "kvcast-codec-profile",
        "version": 1,
        "model": {
            "id": "test-data:Llama-3.1-8B-shaped",
            "n_layers": 32,
            "n_kv_heads": 8,
            "head_dim": 128,
            "kv_elements_per_token": KV_ELEMENTS_PER_TOKEN,
        },
        "device": {"name": "test-data", "cores": 2},
        "chunk_tokens": CHUNK_TOKENS,
        "levels": levels,
        "text": {"quality": 1.0},
        "prefill": {"points": [{"context_tokens": 1500, "tokens_per_s": PREFILL_TOKENS_PER_S}]},
        "provenance": {"command": "tests/reports/report_runs.py (test data)"},
    }


def write_run(run_dir: Path, cfg: FakeRun | None = None) -> Path:
    """Write a complete, self-consistent fabricated run folder; return its path."""
    cfg = cfg or FakeRun()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [_simulate_case(cfg, case, slo, i) for i, (case, slo) in enumerate(cfg.cases)]
    requests = pd.concat([p[0] for p in parts], ignore_index=True)
    chunks = pd.concat([p[1] for p in parts], ignore_index=True)
    traces = pd.concat([p[2] for p in parts], ignore_index=True)
    scenario = {
        "name": "test-data",
        "note": "fabricated by tests/reports/report_runs.py; not a simulation",
        "seed": cfg.seed,
        "controllers": list(cfg.controllers),
        "workload": {"requests": cfg.n_requests, "max_chunks": cfg.max_chunks},
        "sweep": {"slo_s": [s for _, s in cfg.cases]},
    }
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    (run_dir / "summary.json").write_text(json.dumps(_summary(cfg, requests, chunks), indent=1))
    (run_dir / "profile.json").write_text(json.dumps(_profile(), indent=1))
    requests.to_parquet(run_dir / "requests.parquet", index=False)
    chunks.to_parquet(run_dir / "chunks.parquet", index=False)
    traces.to_parquet(run_dir / "traces.parquet", index=False)
    return run_dir


def big_run() -> FakeRun:
    """The scale check of issue 7: 10,000 requests x 6 controllers."""
    return FakeRun(
        n_requests=10_000,
        controllers=("cachegen", "bba", "mpc", "fixed:cg-default", "text", "oracle"),
        max_chunks=12,
        mean_gap_s=0.8,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--controllers", type=int, default=6)
    parser.add_argument("--cases", type=int, default=1)
    args = parser.parse_args()
    cfg = big_run()
    cfg.n_requests = args.requests
    cfg.controllers = tuple(CONTROLLER_MIX)[: args.controllers]
    cfg.cases = tuple((f"slo-{0.5 * (i + 1):g}", 0.5 * (i + 1)) for i in range(args.cases))
    print(write_run(args.run_dir, cfg))


if __name__ == "__main__":
    main()
