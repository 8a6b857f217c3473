"""`kvcast profile`: measure a codec profile (docs/profile-format.md) on real contexts.

Per context (half real prose, half LongChat-style retrieval chats, alternating): capture the
uncompressed KV once by prefilling in pieces (the piece timings give the prefill-throughput
curve for free), cut it into chunks of `chunk_tokens`, encode and decode every chunk at every
level and baseline (bits per element with every byte counted, relative L2 error of K and V,
encode/decode time), then measure the answer quality of the cache decoded at each level against
the uncompressed one (`kvcast.profiling.quality`). Levels whose decoded cache is bit-identical to one
already measured (e.g. zstd and fp16) reuse that measurement.

Contexts run in `jobs` worker processes (spawned, `threads` torch/numba threads each): on two
cores shared with other work, two single-threaded workers beat one two-threaded process by far
(no thread oversubscription). Results do not depend on `jobs` except the timings.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import math
import multiprocessing as mp
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kvcast import __version__
from kvcast.errors import InputError
from kvcast.kv.contexts import get_context
from kvcast.profile_format import profile_from_dict
from kvcast.profiling.lmcache_peer import LMCacheRunError, run_lmcache

RETRIEVAL_CONTEXT = "longchat"
PROSE_CONTEXT = "prose"


@dataclass(frozen=True)
class MeasureConfig:
    """Everything that determines a profile measurement (recorded in the profile)."""

    model: str = "smollm2"
    contexts: int = 20  # alternating prose / longchat, seeds 0, 0, 1, 1, ...
    tokens: int = 4000  # context length
    chunk_tokens: int = 1500
    levels: tuple[str, ...] = ()  # empty: every ladder level, then every baseline
    device: str = "cpu"
    jobs: int = 2
    threads: int = 1
    prefill_piece: int = 500  # capture prefills in pieces of this many tokens
    n_continuation: int = 64
    n_greedy: int = 32
    n_answer: int = 12
    seed: int = 0  # first context seed
    lmcache: bool = False  # also measure LMCache's CacheGen serializer (its own environment)
    calibration_contexts: int = 4  # fit the model tables the KLT levels need on these
    model_tables: str = ""  # set by run_contexts: the fitted model tables' file

    def calibration(self):  # noqa: ANN201 - kvcast.profiling.calibration.Calibration
        """The calibration contexts of the model tables (seeds apart from the measured ones)."""
        from kvcast.profiling.calibration import Calibration  # deferred: imports torch

        return Calibration(self.model, self.calibration_contexts, self.tokens, self.chunk_tokens)

    def context_plan(self) -> list[tuple[str, int]]:
        """(context name, seed) of every context, in order."""
        kinds = (PROSE_CONTEXT, RETRIEVAL_CONTEXT)
        return [(kinds[i % 2], self.seed + i // 2) for i in range(self.contexts)]

    def check(self) -> None:
        for key in ("contexts", "tokens", "chunk_tokens", "jobs", "threads", "prefill_piece",
                "calibration_contexts"):  # fmt: skip
            if getattr(self, key) <= 0:
                raise InputError(f"--{key.replace('_', '-')} must be > 0, got {getattr(self, key)}")
        if self.n_continuation < 2 or self.n_greedy < 1 or self.n_answer < 1:
            raise InputError("continuation >= 2, greedy >= 1 and answer >= 1 tokens are needed")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InputError(f"--device must be cpu or cuda[:N], got {self.device!r}")


def all_levels(cfg: MeasureConfig) -> list[str]:
    """Levels to measure: the given ones (checked), else the ladder's levels then baselines."""
    from kvcast.codec.codec import default_ladder  # deferred: imports torch

    ladder = default_ladder()
    if not cfg.levels:  # the ladder, kvcast's own variants (query-weighted, KLT), baselines
        own = [v.name for v in ladder.variants if v.key_gains or v.transform != "none"]
        return [lv.name for lv in ladder.levels] + own + [b.name for b in ladder.baselines]
    for name in cfg.levels:
        ladder.get(name)  # raises InputError naming the known levels
    return list(cfg.levels)


# ----------------------------------------------------------------------------- GPU hook


def check_gpu(device: str) -> None:
    """A clear error unless the GPU decoder (`kvcast.codec.gpu`) can run on `device`."""
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    try:
        from kvcast.codec import gpu  # deferred: imports torch
    except ImportError as exc:
        raise InputError(
            f"--device {device}: the GPU decoder kvcast.codec.gpu is missing: {exc}"
        ) from exc
    ok, why = gpu.available()
    if not ok:
        raise InputError(f"--device {device}: the GPU decoder cannot run here: {why}")


def gpu_decode_seconds(data: bytes, device: str, cachegen: bool) -> float:
    """Seconds to decode one chunk on a CUDA device with kvcast's GPU decoder.

    CacheGen chunks: `kvcast.profiling.gpu_timing.time_decode([data], device=...)` (CUDA events,
    median kernel time after warm-up). Baselines (decoded by the codec, then moved): the
    synchronized wall time of `kvcast.codec.gpu.decode_chunk`.
    """
    check_gpu(device)
    import torch

    from kvcast.codec import gpu  # deferred: imports torch

    if cachegen:
        from kvcast.profiling.gpu_timing import time_decode  # deferred: imports torch

        return time_decode([data], device=device, warmup=2, repeats=5).kernel_ms / 1e3
    gpu.decode_chunk(data, device=device)  # warm-up
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    gpu.decode_chunk(data, device=device)
    torch.cuda.synchronize(device)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- one context


def _setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass


def encode_measured(
    part: Any,
    level: str,
    *,
    key_gains: Any,
    first: bool,
    tables: Any,
    device: str = "cpu",
    cachegen: bool = True,
) -> tuple[Any, dict]:
    """Encode and decode one chunk (or part of one) at `level`: the decoded fp16 tensor and its
    figures (bytes, payload bytes, encode / decode CPU and wall seconds, squared errors of K and
    V and of the reference). Decode is timed on `device` (a GPU: `gpu_decode_seconds`)."""
    import torch

    from kvcast.codec.codec import EncodeStats, decode_chunk, encode_chunk  # deferred: torch

    st = EncodeStats()
    t, c = time.perf_counter(), time.process_time()
    data = encode_chunk(part, level, stats=st, key_gains=key_gains, context_start=first,
                        model_tables=tables)  # fmt: skip
    enc_wall, enc_s = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    out = decode_chunk(data, dtype=torch.float16, model_tables=tables)
    dec_wall, dec_s = time.perf_counter() - t, time.process_time() - c
    if device != "cpu":
        dec_s = dec_wall = gpu_decode_seconds(data, device, cachegen)
    err = out.to(torch.float32) - part
    return out, {
        "bytes": len(data),
        "payload_bytes": int(st.payload_bytes),
        "encode_s": enc_s,  # CPU seconds of this (single-threaded) worker
        "decode_s": dec_s,
        "encode_wall_s": enc_wall,
        "decode_wall_s": dec_wall,
        "err2_k": float(err[:, 0].pow(2).sum()),
        "err2_v": float(err[:, 1].pow(2).sum()),
        "ref2_k": float(part[:, 0].pow(2).sum()),
        "ref2_v": float(part[:, 1].pow(2).sum()),
    }


def warm_up(levels: list[str], sample: Any, key_gains: Any, tables: Any) -> None:
    """Encode and decode a few tokens at every level once: JIT compilation is not part of the
    timings that follow."""
    from kvcast.codec.codec import decode_chunk, encode_chunk  # deferred: imports torch

    for level in levels:
        warm = encode_chunk(sample[:, :, :16], level, key_gains=key_gains, model_tables=tables)
        decode_chunk(warm, model_tables=tables)


def measure_context(cfg: MeasureConfig, name: str, seed: int) -> dict:
    """Every figure of one context (plain JSON-able data)."""
    import torch

    from kvcast.codec.codec import default_ladder  # deferred: imports torch
    from kvcast.codec.model_tables import load_model_tables  # deferred: imports torch
    from kvcast.kv.sources import load_model  # deferred: imports torch
    from kvcast.profiling import quality as Q  # deferred: imports torch

    _setup_threads(cfg.threads)
    prof = load_model_tables(cfg.model_tables) if cfg.model_tables else None
    t_start = time.perf_counter()
    model = load_model(cfg.model)
    need = cfg.tokens + cfg.n_continuation
    if need > model.max_context:
        raise InputError(
            f"--tokens {cfg.tokens} + {cfg.n_continuation} continuation tokens exceed "
            f"{model.model_id}'s context of {model.max_context}"
        )
    ctx = get_context(name, need, model, seed)
    ids, cont = ctx.token_ids[: cfg.tokens], ctx.token_ids[cfg.tokens :]

    # capture in pieces, timing each: cumulative time to prefill n tokens from scratch
    kv = None
    prefill = []
    elapsed = wall = 0.0  # CPU seconds of this worker (robust to other tenants), wall seconds
    with model.recording_queries() as queries:  # key gains of the query-weighted levels
        for s in range(0, len(ids), cfg.prefill_piece):
            t, c = time.perf_counter(), time.process_time()
            _, kv = model.prefill(ids[s : s + cfg.prefill_piece], kv, logits_to_keep=1)
            elapsed += time.process_time() - c
            wall += time.perf_counter() - t
            prefill.append([min(s + cfg.prefill_piece, len(ids)), elapsed, wall])
    assert kv is not None
    key_gains = queries.key_gains(model.n_kv_heads) if queries.complete else None
    ref = kv.to(torch.float32)
    t_capture = time.perf_counter() - t_start

    probes = Q.make_probes(model, ref, cont, ctx, n_greedy=cfg.n_greedy, n_answer=cfg.n_answer)
    ref_raw = Q.measure(model, ref, probes, ctx)
    bounds = Q.chunk_bounds(len(ids), cfg.chunk_tokens)
    chunks = [ref[:, :, s:e].contiguous() for s, e in bounds]
    t_probes = time.perf_counter() - t_start - t_capture

    warm_up(all_levels(cfg), chunks[0], key_gains, prof)

    baselines = {b.name for b in default_ladder().baselines}
    levels: dict[str, dict] = {}
    seen: dict[str, str] = {}  # digest of the decoded cache -> level measured with it
    for level in all_levels(cfg):
        is_cachegen = level not in baselines
        per_chunk = []
        decoded = []
        for i, ch in enumerate(chunks):
            out, fig = encode_measured(ch, level, key_gains=key_gains, first=i == 0,
                                       tables=prof, device=cfg.device, cachegen=is_cachegen)  # fmt: skip
            per_chunk.append(
                {
                    "tokens": int(ch.shape[2]),
                    "elements": int(ch.numel()),
                    **fig,
                    "bits_per_element": fig["bytes"] * 8 / ch.numel(),
                }  # fmt: skip
            )
            decoded.append(out)
        digest = hashlib.sha256(b"".join(d.numpy().tobytes() for d in decoded)).hexdigest()
        if digest in seen:
            levels[level] = {"chunks": per_chunk, "quality": dict(levels[seen[digest]]["quality"])}
            levels[level]["quality"]["same_cache_as"] = seen[digest]
            continue
        seen[digest] = level
        cache = Q.assemble_cache(
            model, ids, cfg.chunk_tokens, [level] * len(chunks), lambda i, _lv, d=decoded: d[i]
        )
        raw = Q.measure(model, cache, probes, ctx)
        levels[level] = {
            "chunks": per_chunk,
            "quality": Q.quality_figures(raw, ref_raw, probes.ref_correct),
        }
    peers = {}
    if cfg.lmcache:
        peers["lmcache-cachegen"] = _measure_lmcache(model, ids, chunks, cfg, probes, ctx, ref_raw)
    return {
        "peers": peers,
        "context": name,
        "seed": seed,
        "tokens": len(ids),
        "text_sha256": hashlib.sha256(ctx.text.encode()).hexdigest()[:16],
        "source": ctx.source,
        "synthetic": ctx.synthetic,
        "model_profile": prof.id_hex if prof is not None else None,
        "answer": ctx.answer,
        "ref": {**ref_raw.to_dict(), "ref_correct": probes.ref_correct},
        "prefill": prefill,
        "levels": levels,
        "seconds": {
            "capture": t_capture,
            "probes": t_probes,
            "total": time.perf_counter() - t_start,
        },
    }


def _measure_lmcache(model, ids, chunks, cfg, probes, ctx, ref_raw) -> dict:
    """LMCache 0.5.6's CacheGen on this context's chunks (fp16 in), run in its own Python
    environment by codec/lmcache_runner.py; its decoded cache is measured like a level's."""
    import torch

    from kvcast.profiling import quality as Q  # deferred: imports torch
    from kvcast.profiling.codec_bench import find_lmcache_python  # deferred: imports torch

    python = find_lmcache_python(None)
    if python is None:
        raise InputError(
            "--lmcache: no LMCache environment found (scripts/setup_lmcache.sh, or set "
            "$KVCAST_LMCACHE_PYTHON)"
        )
    try:
        res, decoded_np = run_lmcache(python, [c.to(torch.float16).numpy() for c in chunks], 1)
    except LMCacheRunError as exc:
        raise InputError(f"--lmcache: {exc}") from exc
    decoded = [torch.from_numpy(d) for d in decoded_np]
    per_chunk = []
    for ch, dec, r in zip(chunks, decoded, res["chunks"], strict=True):
        err = dec - ch
        per_chunk.append({
            "tokens": int(ch.shape[2]), "elements": int(ch.numel()), "bytes": int(r["bytes"]),
            "bits_per_element": int(r["bytes"]) * 8 / ch.numel(),
            "encode_wall_s": r["encode_s"], "decode_wall_s": r["decode_s"],
            "err2_k": float(err[:, 0].pow(2).sum()), "err2_v": float(err[:, 1].pow(2).sum()),
            "ref2_k": float(ch[:, 0].pow(2).sum()), "ref2_v": float(ch[:, 1].pow(2).sum()),
        })  # fmt: skip
    cache = Q.assemble_cache(
        model, ids, cfg.chunk_tokens, ["lmcache"] * len(chunks), lambda i, _lv: decoded[i]
    )
    raw = Q.measure(model, cache, probes, ctx)
    return {
        "chunks": per_chunk,
        "description": f"LMCache {res['lmcache_version']} CacheGenSerializer ({res['device']})",
        "quality": Q.quality_figures(raw, ref_raw, probes.ref_correct),
    }


def peer_summary(name: str, results: list[dict]) -> dict:
    """A peer codec over all contexts: bits, quality, error (wall-clock speeds)."""
    rows = [r["peers"][name] for r in results]
    chunks = [c for p in rows for c in p["chunks"]]
    elems = sum(c["elements"] for c in chunks)
    dnll = [p["quality"]["nll"] - r["ref"]["nll"] for p, r in zip(rows, results, strict=True)]
    return {
        "description": rows[0]["description"],
        "bits_per_element": _dist([c["bits_per_element"] for c in chunks]),
        "quality": {
            "normalized": float(statistics.fmean(p["quality"]["normalized"] for p in rows)),
            "perplexity_ratio": float(math.exp(statistics.fmean(dnll))),
            "greedy_agreement": float(
                statistics.fmean(p["quality"]["greedy_agreement"] for p in rows)
            ),
        },
        "rel_l2_error": {
            kv: math.sqrt(
                sum(c[f"err2_{kv}"] for c in chunks) / sum(c[f"ref2_{kv}"] for c in chunks)
            )
            for kv in ("k", "v")
        },
        "encode_wall_melem_per_s": elems / sum(c["encode_wall_s"] for c in chunks) / 1e6,
        "decode_wall_melem_per_s": elems / sum(c["decode_wall_s"] for c in chunks) / 1e6,
    }


def _worker_init(threads: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it (it terminates the
    # pool), so workers do not each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    _setup_threads(threads)


def with_model_tables(cfg: MeasureConfig, specs: list, say: Callable[[str], None]) -> MeasureConfig:
    """`cfg` with the model tables `specs` need, fitted on its calibration contexts (never on
    measured ones), or found in the user cache where fitted before."""
    from kvcast.profiling.calibration import calibration_profile  # deferred: imports torch

    cal = cfg.calibration()
    cal.check_disjoint(cfg.context_plan())
    _setup_threads(cfg.jobs * cfg.threads)
    prof, path = calibration_profile(cal, specs, say=say)
    say(f"model tables {prof.id_hex} ({path})")
    return dataclasses.replace(cfg, model_tables=str(path))


def run_in_workers(
    worker: Callable[..., dict],
    jobs: list[tuple],
    n_workers: int,
    threads: int,
    say: Callable[[str], None],
    progress: Callable[[int, int, dict, float], str],
) -> list[dict]:
    """`worker(*job)` for every job, in `n_workers` spawned processes of `threads` threads each
    (in this process when 1); results in job order, `progress` said as each one ends. `worker`
    must be a module-level function (it is pickled)."""
    results: list[dict | None] = [None] * len(jobs)
    t0 = time.perf_counter()
    if n_workers == 1:
        _setup_threads(threads)
        for i, job in enumerate(jobs):
            results[i] = worker(*job)
            say(progress(i, len(jobs), results[i], t0))
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(n_workers, initializer=_worker_init, initargs=(threads,)) as pool:
            run = functools.partial(_indexed, worker)
            for done, (i, res) in enumerate(pool.imap_unordered(run, enumerate(jobs))):
                results[i] = res
                say(progress(done, len(jobs), res, t0))
    return [r for r in results if r is not None]


def _indexed(worker: Callable[..., dict], item: tuple[int, tuple]) -> tuple[int, dict]:
    i, job = item
    return i, worker(*job)


def run_contexts(cfg: MeasureConfig, say: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Measure every context of `cfg` (in `jobs` processes); results in plan order.

    Levels that need model tables (KLT bases, offline tables) are measured with one fitted
    first on the calibration contexts (`kvcast.profiling.calibration`), never on measured ones.
    """

    from kvcast.codec.codec import default_ladder  # deferred: imports torch

    cfg.check()
    ladder = default_ladder()
    specs = [ladder.get(n) for n in all_levels(cfg)]  # fails early on an unknown level
    if cfg.device != "cpu":
        check_gpu(cfg.device)
    plan = cfg.context_plan()
    if any(getattr(s, "needs_model_tables", False) for s in specs) and not cfg.model_tables:
        cfg = with_model_tables(cfg, specs, say)
    jobs = [(cfg, name, seed) for name, seed in plan]
    return run_in_workers(measure_context, jobs, cfg.jobs, cfg.threads, say, _progress)


def _progress(i: int, n: int, res: dict, t0: float) -> str:
    q = {k: round(v["quality"]["normalized"], 4) for k, v in res["levels"].items()}
    return (
        f"[{i + 1}/{n}] {res['context']} seed {res['seed']}: {res['seconds']['total']:.0f} s "
        f"(elapsed {time.perf_counter() - t0:.0f} s); ref correct={res['ref']['ref_correct']}; "
        f"quality {q}"
    )


# ----------------------------------------------------------------------------- aggregation


def _dist(samples: list[float]) -> dict:
    a = np.asarray(samples, dtype=np.float64)
    p5, p50, p95 = np.percentile(a, [5, 50, 95])
    return {
        "mean": float(a.mean()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "samples": [round(float(x), 6) for x in a],
    }


def level_summary(level: str, results: list[dict]) -> dict:
    """Aggregate one level over all contexts (plain data in the profile's level layout)."""
    bits, per_chunk_q = [], []
    enc_s = dec_s = elems = enc_wall = dec_wall = 0.0
    e2 = {"k": 0.0, "v": 0.0}
    r2 = {"k": 0.0, "v": 0.0}
    payload = total = 0
    ctx_q, dnll, agree, prefix = [], [], [], []
    retr_ok = retr_n = 0
    for res in results:
        lv = res["levels"][level]
        q = lv["quality"]
        ctx_q.append(q["normalized"])
        dnll.append(q["nll"] - res["ref"]["nll"])
        agree.append(q["greedy_agreement"])
        prefix.append(q["greedy_prefix"])
        if "retrieval" in q["components"]:
            retr_n += 1
            retr_ok += int(q["components"]["retrieval"] == 1.0)
        for ch in lv["chunks"]:
            bits.append(ch["bits_per_element"])
            per_chunk_q.append(q["normalized"])
            enc_s += ch["encode_s"]
            dec_s += ch["decode_s"]
            enc_wall += ch["encode_wall_s"]
            dec_wall += ch["decode_wall_s"]
            elems += ch["elements"]
            payload += ch["payload_bytes"]
            total += ch["bytes"]
            for kv in ("k", "v"):
                e2[kv] += ch[f"err2_{kv}"]
                r2[kv] += ch[f"ref2_{kv}"]
    quality: dict = {
        "normalized": float(statistics.fmean(ctx_q)),
        "perplexity_ratio": float(math.exp(statistics.fmean(dnll))),
        "greedy_agreement": float(statistics.fmean(agree)),
        "per_chunk": [round(x, 6) for x in per_chunk_q],
    }
    if retr_n:
        quality["retrieval_accuracy"] = retr_ok / retr_n
    return {
        "name": level,
        "bits_per_element": _dist(bits),
        "quality": quality,
        "rel_l2_error": {kv: math.sqrt(e2[kv] / r2[kv]) if r2[kv] else 0.0 for kv in ("k", "v")},
        "encode_melem_per_s": elems / max(enc_s, 1e-9) / 1e6,
        "decode_melem_per_s": elems / max(dec_s, 1e-9) / 1e6,
        "extra": {
            "greedy_prefix": float(statistics.fmean(prefix)),
            "retrieval_cases": retr_n,
            "payload_share": payload / total,
            "encode_wall_melem_per_s": elems / enc_wall / 1e6,
            "decode_wall_melem_per_s": elems / dec_wall / 1e6,
            "quality_per_context": [round(x, 6) for x in ctx_q],
        },
    }


def prefill_points(results: list[dict]) -> list[dict]:
    """Median (over contexts) cumulative prefill time at each measured context length."""
    by_n: dict[int, list[float]] = {}
    for res in results:
        for n, secs, _wall in res["prefill"]:
            by_n.setdefault(int(n), []).append(float(secs))
    return [
        {"context_tokens": n, "tokens_per_s": n / statistics.median(ts)}
        for n, ts in sorted(by_n.items())
    ]


@dataclass
class RunInfo:
    """Where and how the measurement ran (for provenance)."""

    command: str
    wall_s: float = 0.0
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    extra: dict = field(default_factory=dict)


def machine_text() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"


def _model_tables_extra(cfg: MeasureConfig, results: list[dict]) -> dict:
    """Which model tables the KLT / offline-table levels were measured with, and its contexts."""
    ids = {r.get("model_profile") for r in results}
    if ids == {None}:
        return {}
    cal = cfg.calibration()
    return {
        "model_profile": {
            "id": sorted(i for i in ids if i),
            "calibration_contexts": [f"{n} seed={s} tokens={cal.tokens}" for n, s in cal.plan()],
        }
    }


def build_profile(cfg: MeasureConfig, results: list[dict], info: RunInfo):
    """The `CodecProfile` of a finished measurement."""
    from kvcast.codec.codec import default_ladder  # deferred: imports torch
    from kvcast.kv.sources import load_model  # deferred: imports torch

    if not results:
        raise InputError("no contexts were measured")
    model = load_model(cfg.model)
    ladder = default_ladder()
    baseline_names = {b.name for b in ladder.baselines}
    levels = []
    for level in results[0]["levels"]:
        lv = level_summary(level, results)
        lv["kind"] = "baseline" if level in baseline_names else "cachegen"
        levels.append(lv)
    # cachegen levels best measured quality first (ties: more bits first), then the baselines in
    # the ladder's order; a level that measures better than a bigger one dominates it
    levels.sort(
        key=lambda lv: (
            lv["kind"] == "baseline",
            0.0 if lv["kind"] == "baseline" else -lv["quality"]["normalized"],
            0.0 if lv["kind"] == "baseline" else -lv["bits_per_element"]["mean"],
        )
    )
    int8 = next((lv for lv in levels if lv["name"] == "int8"), None)
    if int8 is not None:
        for lv in levels:
            lv["extra"]["smaller_than_int8"] = (
                int8["bits_per_element"]["mean"] / lv["bits_per_element"]["mean"]
            )
    ref_ok = [r["ref"]["ref_correct"] for r in results if r["ref"]["ref_correct"] is not None]
    contexts = [
        f"{r['context']} seed={r['seed']} tokens={r['tokens']} sha256={r['text_sha256']}"
        + (" (SYNTHETIC conversation)" if r["synthetic"] else "")
        for r in results
    ]
    doc = {
        "format": "kvcast-codec-profile",
        "version": 1,
        "model": {
            "id": model.model_id,
            "n_layers": model.n_layers,
            "n_kv_heads": model.n_kv_heads,
            "head_dim": model.head_dim,
            "kv_elements_per_token": model.n_layers * 2 * model.n_kv_heads * model.head_dim,
        },
        "device": {"name": device_name(cfg.device), "cores": os.cpu_count()},
        "chunk_tokens": cfg.chunk_tokens,
        "levels": levels,
        "text": {"quality": 1.0},
        "prefill": {"points": prefill_points(results)},
        "provenance": {
            "command": info.command,
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "kvcast_version": __version__,
            "contexts": contexts,
            "notes": (
                f"machine: {machine_text()}; wall time {info.wall_s:.0f} s with {cfg.jobs} "
                f"worker process(es) x {cfg.threads} thread(s); load average before "
                f"{list(info.load_before)}, after {list(info.load_after)}. Quality: "
                "docs/quality.md. Encode/decode and prefill throughputs are per CPU-second "
                "(process CPU time of single-threaded workers), so other tenants' load on the "
                "machine does not skew them; wall-clock figures are in the raw file."
            ),
        },
        "extra": {
            "config": asdict(cfg),
            "wall_s": info.wall_s,
            "python": sys.version.split()[0],
            "reference": {
                "retrieval_contexts": len(ref_ok),
                "retrieval_correct": sum(ref_ok),
                "mean_perplexity": statistics.fmean(r["ref"]["perplexity"] for r in results),
            },
            "per_context_seconds": [round(r["seconds"]["total"], 1) for r in results],
            "peers": {name: peer_summary(name, results) for name in results[0].get("peers", {})},
            **_model_tables_extra(cfg, results),
            **info.extra,
        },
    }
    return profile_from_dict(doc, source="kvcast profile")
