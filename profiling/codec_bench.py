"""`kvcast bench codec`: every level and baseline on the same real KV chunks, plus LMCache.

For each level: bits per KV element (total, payload, side information by section), ratio
against the 8-bit baseline, relative L2 error of K and of V, encode and decode throughput
(million KV elements per second, median of repeats after a warm-up) and coder efficiency
(ideal code length of the coded symbols under the coder's model / payload bits). The model
profile for profile-based levels is fitted on a *different* text than the one measured.
LMCache's CacheGen serializer runs in its own Python environment (see codec/lmcache_runner.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kvcast.chunks import chunk_bounds
from kvcast.codec.codec import EncodeStats, decode_chunk, encode_chunk
from kvcast.codec.gpu import available as gpu_available
from kvcast.codec.gpu import decode as gd
from kvcast.codec.ladder import BaselineSpec, Ladder, load_ladder
from kvcast.codec.model_tables import ModelTables, fit_model_tables, levels_needing_tables
from kvcast.codec.transforms import fit_klt
from kvcast.errors import InputError
from kvcast.key_gains import check_key_gains
from kvcast.kv.sources import capture
from kvcast.kv.sources.safetensors_io import load_kv as load_kv_file
from kvcast.paths import cache_dir
from kvcast.profiling.gpu_timing import time_decode
from kvcast.profiling.lmcache_peer import LMCacheRunError, run_lmcache

LMCACHE_ENV = "KVCAST_LMCACHE_PYTHON"


@dataclass
class BenchConfig:
    model: str = "smollm2"
    context: str = "prose"
    tokens: int = 4500
    seed: int = 0
    chunk_tokens: int = 1500
    fit_context: str = "prose"
    fit_seed: int = 1
    fit_tokens: int = 4500
    kv_file: str | None = None
    fit_kv_file: str | None = None
    levels: list[str] | None = None
    repeats: int = 3
    lmcache_python: str | None = None
    lmcache: bool = True
    ladder_path: str | None = None
    device: str = "cpu"  # "cuda[:N]": also time the GPU decoder (kvcast.profiling.gpu_timing)
    command: str = ""
    log: list[str] = field(default_factory=list)


def write_json(path: str | Path, res: dict) -> None:
    """Write a benchmark's figures (parent folders made) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_kv(
    model: str, context: str, tokens: int, seed: int, kv_file: str | None
) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """float32 [L, 2, T, H, D] of a real model on a real text, its metadata and its key gains
    (float32 [L, H * D], or None: a synthetic KV or a model whose queries cannot be recorded),
    cached under cache_dir(): kv-KEY.npy, kv-KEY.json and, where the capture had them,
    kv-KEY.gains.npy."""
    if kv_file:
        cache = load_kv_file(kv_file)
        if tokens and cache.n_tokens > tokens:
            cache = cache.slice_tokens(0, tokens)
        meta = {"file": kv_file, "model_id": cache.meta.model_id,
                "synthetic": cache.meta.synthetic, "key_gains": cache.key_gains is not None}  # fmt: skip
        return cache.kv.to(torch.float32).numpy(), meta, cache.key_gains
    key = hashlib.sha256(json.dumps([model, context, tokens, seed]).encode()).hexdigest()[:16]
    folder = cache_dir() / "bench-codec"
    path, meta_path = folder / f"kv-{key}.npy", folder / f"kv-{key}.json"
    gains_path = folder / f"kv-{key}.gains.npy"
    meta = json.loads(meta_path.read_text()) if path.is_file() and meta_path.is_file() else None
    # an entry of a real model written before key gains existed is captured again, with them
    if meta is not None and ("key_gains" in meta or meta.get("synthetic")):
        kv = np.load(path)
        gains = np.load(gains_path) if meta.get("key_gains") else None
        if gains is not None:
            c = kv.shape[3] * kv.shape[4]
            gains = check_key_gains(gains, kv.shape[0], c, what=str(gains_path))
        meta.setdefault("key_gains", False)
        return kv, meta, gains

    _say(f"capturing {model} KV of context {context!r} ({tokens} tokens, seed {seed}) ...")
    cache = capture(model, tokens=tokens, context=context, seed=seed)
    kv = cache.kv.to(torch.float32).numpy()
    meta = {
        "model_id": cache.meta.model_id,
        "synthetic": cache.meta.synthetic,
        "context": context,
        "tokens": int(cache.n_tokens),
        "seed": seed,
        "extra": {k: str(v) for k, v in cache.meta.extra.items()},
        "key_gains": cache.key_gains is not None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, kv)
    if cache.key_gains is not None:
        np.save(gains_path, cache.key_gains)
    meta_path.write_text(json.dumps(meta))  # last: a cache entry is complete once this exists
    return kv, meta, cache.key_gains


def split_chunks(kv: np.ndarray, chunk_tokens: int) -> list[np.ndarray]:
    """The full chunks of `kvcast.chunks.chunk_bounds` (a benchmark times equal chunks, so a
    shorter last chunk is left out and reported)."""
    full = [(a, b) for a, b in chunk_bounds(kv.shape[2], chunk_tokens) if b - a == chunk_tokens]
    if not full:
        raise InputError(f"--chunk-tokens {chunk_tokens}: the KV has only {kv.shape[2]} tokens")
    return [np.ascontiguousarray(kv[:, :, a:b]) for a, b in full]


class _ErrAcc:
    """Relative L2 error of K and of V over all chunks: sqrt(sum |x - y|^2 / sum |x|^2)."""

    def __init__(self) -> None:
        self.num = np.zeros(2)
        self.den = np.zeros(2)

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        for kv in range(2):
            d = out[:, kv].astype(np.float64) - ref[:, kv]
            self.num[kv] += float((d * d).sum())
            self.den[kv] += float((ref[:, kv].astype(np.float64) ** 2).sum())

    def result(self) -> dict[str, float]:
        e = np.sqrt(self.num / self.den)
        return {"k": float(e[0]), "v": float(e[1])}


def check_bench_device(device: str) -> None:
    """InputError unless `device` is "cpu" or a CUDA device the GPU decoder can run on here."""
    if device == "cpu":
        return
    if device != "cuda" and not re.fullmatch(r"cuda:\d+", device):
        raise InputError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")

    ok, why = gpu_available()
    if not ok:
        raise InputError(f"--device {device}: the GPU decoder cannot run here: {why}")


def gpu_decode_figures(datas: list[bytes], prof: ModelTables | None, device: str,
                       repeats: int, cpu_out: torch.Tensor) -> dict:  # fmt: skip
    """GPU decode timing of one level's chunks (`time_decode`: CUDA events, fresh inputs), after
    checking that the GPU decodes the last chunk to the CPU decoder's tensor bit for bit."""
    got = gd.decode_chunk(datas[-1], model_tables=prof, device=device, dtype=cpu_out.dtype)
    if not torch.equal(got.cpu(), cpu_out):
        raise RuntimeError(f"GPU decode of level {gd.prepare(datas[-1]).head.level!r} differs "
                           "from the CPU decoder's output")  # fmt: skip
    t = time_decode(datas, model_tables=prof, device=device, dtype=cpu_out.dtype,
                    repeats=max(10, repeats))  # fmt: skip
    out = t.as_dict()
    out.pop("samples_kernel_ms")
    out["bit_identical_to_cpu"] = True
    return out


def bench_level(name: str, chunks: list[np.ndarray], prof: ModelTables | None, ladder: Ladder,
                repeats: int, device: str = "cpu",
                key_gains: np.ndarray | None = None) -> dict:  # fmt: skip
    """One level's figures; with a CUDA `device`, CacheGen levels also get `gpu_decode`
    (baselines have no GPU decoder: null). `key_gains` (the KV's, `load_kv`) is what levels
    with `k_gain: query` need; the others ignore it."""
    spec = ladder.get(name)
    n_el = sum(c.size for c in chunks)
    # warm-up: numba compilation / cache load, first-touch allocations
    decode_chunk(
        encode_chunk(chunks[0], name, model_tables=prof, ladder=ladder, key_gains=key_gains),
        model_tables=prof,
    )
    enc_times, dec_times, sizes = [], [], []
    payload = ideal = emp = 0.0
    side: dict[str, int] = {}
    err = _ErrAcc()
    datas = []
    for i, c in enumerate(chunks):
        st = EncodeStats()
        et, dt = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = encode_chunk(c, name, model_tables=prof, ladder=ladder, stats=st,
                                key_gains=key_gains, context_start=i == 0)  # fmt: skip
            et.append(time.perf_counter() - t0)
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = decode_chunk(data, model_tables=prof, device="cpu", dtype=torch.float16)
            dt.append(time.perf_counter() - t0)
        enc_times.append(statistics.median(et))
        dec_times.append(statistics.median(dt))
        sizes.append(len(data))
        datas.append(data)
        payload += st.payload_bytes
        ideal += st.ideal_payload_bits
        emp += st.empirical_entropy_bits
        for k, v in st.side_bytes.items():
            side[k] = side.get(k, 0) + v
        err.add(c, out.to(torch.float32).numpy())
    total = sum(sizes)
    kind = spec.kind if isinstance(spec, BaselineSpec) else "cachegen"
    row = {
        "name": name,
        "kind": "baseline" if isinstance(spec, BaselineSpec) else "cachegen",
        "codec": kind,
        "ladder": "level"
        if name in ladder.names()
        else ("baseline" if kind != "cachegen" else "variant"),
        "description": spec.description,
        "bits_per_element": {
            "total": 8 * total / n_el,
            "payload": 8 * payload / n_el,
            "side": 8 * (total - payload) / n_el,
            "side_by_section": {k: 8 * v / n_el for k, v in side.items()},
        },
        "bytes_per_chunk": sizes,
        "rel_l2_error": err.result(),
        "encode_melem_per_s": n_el / sum(enc_times) / 1e6,
        "decode_melem_per_s": n_el / sum(dec_times) / 1e6,
        "coder_efficiency": (ideal / (8 * payload)) if ideal else None,
        "entropy_efficiency": (emp / (8 * payload)) if emp else None,
    }
    if device != "cpu":
        row["gpu_decode"] = (
            None
            if isinstance(spec, BaselineSpec)
            else gpu_decode_figures(datas, prof, device, repeats, out)
        )
    if not isinstance(spec, BaselineSpec):
        row["params"] = {
            "delta": {"k": spec.delta_k, "v": spec.delta_v},
            "group": spec.group,
            "anchor_bins": spec.anchor_bins,
            "tables": spec.tables,
            "prob_bits": spec.prob_bits,
            "lanes": spec.lanes,
            "block_tokens": spec.block_tokens,
            "k_gain": spec.k_gain,
            "k_bins": [list(x) for x in spec.k_bins],
            "v_bins": [list(x) for x in spec.v_bins],
        }
    return row


def levels_for_gains(
    ladder: Ladder, names: list[str], gains: np.ndarray | None, *, explicit: bool, meta: dict
) -> tuple[list[str], list[dict]]:
    """(levels to measure, skipped levels with why). Levels with `k_gain: query` need the KV's
    key gains: without them a level the user named is an InputError, and one that came from
    the default list (all levels) is skipped, said on stderr and listed in the output."""
    need = ladder.needing_key_gains(names)
    if gains is not None or not need:
        return names, []
    if "file" in meta:
        why = f"the KV file {meta['file']} carries no key gains"
    elif meta.get("synthetic"):
        why = "the KV is synthetic: no model queries were seen"
    else:
        why = (f"the capture of {meta.get('model_id')} has no key gains (the model has no "
               "Llama-style q_proj to record queries from)")  # fmt: skip
    if explicit:
        raise InputError(f"--levels {','.join(need)}: k_gain: query levels need the model's key "
                         f"gains, and {why}")  # fmt: skip
    _say(f"skipping {', '.join(need)} (k_gain: query needs key gains): {why}")
    return [n for n in names if n not in need], [{"name": n, "reason": why} for n in need]


def find_lmcache_python(explicit: str | None) -> str | None:
    """--lmcache-python, else $KVCAST_LMCACHE_PYTHON, else ../lmcache-venv beside the checkout."""
    if explicit:
        if not Path(explicit).is_file():
            raise InputError(f"--lmcache-python {explicit}: no such file")
        return explicit
    env = os.environ.get(LMCACHE_ENV)
    if env:
        return env if Path(env).is_file() else None
    here = Path(__file__).resolve().parents[1]
    for cand in (
        here.parent / "lmcache-venv" / "bin" / "python",
        here / ".lmcache-venv" / "bin" / "python",
    ):
        if cand.is_file():
            return str(cand)
    return None


def bench_lmcache(python: str, chunks: list[np.ndarray], repeats: int) -> dict:
    """LMCache 0.5.6 CacheGen on the same chunks (fp16 input), in a subprocess."""
    try:
        res, decoded = run_lmcache(python, chunks, repeats)
    except LMCacheRunError as exc:
        return {"name": "lmcache-cachegen", "status": "failed", "error": str(exc)}
    n_el = sum(c.size for c in chunks)
    err = _ErrAcc()
    for c, dec in zip(chunks, decoded, strict=True):
        err.add(c, dec)
    total = sum(r["bytes"] for r in res["chunks"])
    enc = sum(r["encode_s"] for r in res["chunks"])
    dec_s = sum(r["decode_s"] for r in res["chunks"])
    return {
        "name": "lmcache-cachegen",
        "status": "ok",
        "kind": "peer",
        "description": f"LMCache {res['lmcache_version']} CacheGenSerializer ({res['device']}, "
        "pickled output incl. per-chunk CDF)",
        "bits_per_element": {"total": 8 * total / n_el},
        "bytes_per_chunk": [r["bytes"] for r in res["chunks"]],
        "rel_l2_error": err.result(),
        "encode_melem_per_s": n_el / enc / 1e6,
        "decode_melem_per_s": n_el / dec_s / 1e6,
        "encode_s_per_chunk": [r["encode_s"] for r in res["chunks"]],
        "decode_s_per_chunk": [r["decode_s"] for r in res["chunks"]],
        "key_bins": res["chunks"][0]["key_bins"],
        "value_bins": res["chunks"][0]["value_bins"],
        "environment": {"python": python, "torch": res["torch"], "numpy": res["numpy"]},
    }


def run_bench(cfg: BenchConfig) -> dict:
    ladder = load_ladder(cfg.ladder_path)
    names = cfg.levels or ladder.all_names()
    for n in names:
        ladder.get(n)  # unknown names fail before any work
    check_bench_device(cfg.device)  # so does a GPU that is not there
    kv, meta, gains = load_kv(cfg.model, cfg.context, cfg.tokens, cfg.seed, cfg.kv_file)
    names, skipped = levels_for_gains(ladder, names, gains, explicit=bool(cfg.levels), meta=meta)
    chunks = split_chunks(kv, cfg.chunk_tokens)
    prof = None
    needs = ladder.needing_model_tables(names)
    fit_meta: dict = {}
    if needs:  # offline tables and KLT bases, fitted on another context (--fit-context)
        fit_kv, fit_meta, fit_gains = load_kv(
            cfg.model, cfg.fit_context, cfg.fit_tokens, cfg.fit_seed, cfg.fit_kv_file
        )
        fit_chunks = split_chunks(fit_kv, cfg.chunk_tokens)
        transforms = None
        if any(getattr(ladder.get(n), "transform", "none") != "none" for n in needs):
            transforms = fit_klt([fit_kv], [fit_gains])
        prof = fit_model_tables(
            fit_chunks,
            levels_needing_tables(ladder, with_transforms=transforms is not None),
            model_id=str(meta.get("model_id")),
            transforms=transforms,
        )
    _say(
        f"{len(chunks)} chunks of {cfg.chunk_tokens} tokens, shape {list(chunks[0].shape)}; {len(names)} levels"
    )
    rows = []
    for n in names:
        t0 = time.perf_counter()
        rows.append(bench_level(n, chunks, prof, ladder, cfg.repeats, cfg.device, gains))
        _say(
            f"  {n}: {rows[-1]['bits_per_element']['total']:.3f} bits/element ({time.perf_counter() - t0:.1f} s)"
        )
    int8 = next((r for r in rows if r["name"] == "int8"), None)
    lm = None
    if cfg.lmcache:
        py = find_lmcache_python(cfg.lmcache_python)
        if py is None:
            lm = {"name": "lmcache-cachegen", "status": "not installed",
                  "error": "no LMCache environment found (scripts/setup_lmcache.sh; --lmcache-python)"}  # fmt: skip
        else:
            _say(f"  LMCache CacheGen via {py} ...")
            lm = bench_lmcache(py, chunks, cfg.repeats)
    if int8 is None:
        int8 = bench_level("int8", chunks, prof, ladder, 1)
    ref_bits = int8["bits_per_element"]["total"]
    for r in [*rows, *([lm] if lm and lm.get("status") == "ok" else [])]:
        r["ratio_vs_int8"] = ref_bits / r["bits_per_element"]["total"]
    return {
        "format": "kvcast-bench-codec",
        "version": 1,
        "command": cfg.command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numba_threads": _numba_threads(),
        },  # fmt: skip
        "kv": {
            **meta,
            "shape": list(kv.shape),
            "chunk_tokens": cfg.chunk_tokens,
            "n_chunks": len(chunks),
            "elements_per_chunk": int(chunks[0].size),
        },  # fmt: skip
        "model_profile": None if prof is None else {"id": prof.id_hex, "fitted_on": fit_meta},
        "device": cfg.device,
        "default_level": ladder.default,
        "int8_bits_per_element": ref_bits,
        "levels": rows,
        "skipped_levels": skipped,
        "lmcache": lm,
        "targets": _targets(rows, lm, ladder.default),
    }


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _targets(rows: list[dict], lm: dict | None, default: str) -> dict:
    by = {r["name"]: r for r in rows}
    out: dict = {}
    if default in by:
        out["default_ratio_vs_int8"] = by[default]["ratio_vs_int8"]
        out["default_at_least_3.5x"] = by[default]["ratio_vs_int8"] >= 3.5
    cg = [r for r in rows if r["kind"] == "cachegen"]
    if cg:
        best = max(cg, key=lambda r: r["ratio_vs_int8"])
        out["max_ratio_vs_int8"] = {"level": best["name"], "ratio": best["ratio_vs_int8"]}
        out["some_level_at_least_4.3x"] = best["ratio_vs_int8"] >= 4.3
        effs = [r["coder_efficiency"] for r in cg if r["coder_efficiency"]]
        out["min_coder_efficiency"] = min(effs) if effs else None
    if lm and lm.get("status") == "ok":
        e = lm["rel_l2_error"]
        ok = [
            r for r in cg if r["rel_l2_error"]["k"] <= e["k"] and r["rel_l2_error"]["v"] <= e["v"]
        ]
        if ok:
            best = min(ok, key=lambda r: r["bits_per_element"]["total"])
            out["smallest_at_lmcache_error_or_lower"] = {
                "level": best["name"],
                "bits_per_element": best["bits_per_element"]["total"],
                "lmcache_bits_per_element": lm["bits_per_element"]["total"],
                "size_vs_lmcache": best["bits_per_element"]["total"]
                / lm["bits_per_element"]["total"],
            }
        for key, name in (("default", default), ("same_bins_as_lmcache", "cachegen-q2")):
            row = by.get(name)
            if row:
                out[f"decode_speedup_vs_lmcache_cpu_{key}"] = (
                    row["decode_melem_per_s"] / lm["decode_melem_per_s"]
                )
                out[f"encode_speedup_vs_lmcache_cpu_{key}"] = (
                    row["encode_melem_per_s"] / lm["encode_melem_per_s"]
                )
        q2 = by.get("cachegen-q2")
        if q2:
            out["same_bins_as_lmcache"] = {
                "level": "cachegen-q2",
                "size_vs_lmcache": q2["bits_per_element"]["total"]
                / lm["bits_per_element"]["total"],
                "k_error_vs_lmcache": q2["rel_l2_error"]["k"] / e["k"],
                "v_error_vs_lmcache": q2["rel_l2_error"]["v"] / e["v"],
            }
    return out


def format_table(res: dict) -> str:
    hdr = (f"{'level':22s} {'bits/el':>8s} {'payload':>8s} {'side':>6s} {'x int8':>7s} {'K err':>7s} "
           f"{'V err':>7s} {'enc M/s':>8s} {'dec M/s':>8s} {'coder eff':>9s}")  # fmt: skip
    lines = [hdr, "-" * len(hdr)]
    rows = list(res["levels"])
    lm = res.get("lmcache")
    if lm and lm.get("status") == "ok":
        rows.append(lm)
    for r in rows:
        b = r["bits_per_element"]
        eff = r.get("coder_efficiency")
        name = r["name"] + (" *" if r["name"] == res["default_level"] else "")
        lines.append(
            f"{name:22s} {b['total']:8.3f} {b.get('payload', float('nan')):8.3f} {b.get('side', float('nan')):6.3f} "
            f"{r['ratio_vs_int8']:7.2f} {r['rel_l2_error']['k']:7.4f} {r['rel_l2_error']['v']:7.4f} "
            f"{r['encode_melem_per_s']:8.1f} {r['decode_melem_per_s']:8.1f} {eff if eff else float('nan'):9.4f}"
        )
    if lm and lm.get("status") != "ok":
        lines.append(f"lmcache-cachegen: {lm['status']} ({lm.get('error', '')})")
    for sk in res.get("skipped_levels", []):
        lines.append(f"{sk['name']}: skipped ({sk['reason']})")
    kv = res["kv"]
    lines.append(
        f"* default level. KV: {kv.get('model_id')} {kv['shape']}, {kv['n_chunks']} chunks of {kv['chunk_tokens']} tokens; "
        f"errors are relative L2 over all chunks; throughput in million KV elements/s (CPU, {res['machine']['cpus']} cores)"
    )
    gpu = [r for r in res["levels"] if r.get("gpu_decode")]
    if gpu:
        lines.append(f"GPU decode ({gpu[0]['gpu_decode']['device']}, CUDA events, fresh inputs; "
                     "bit-identical to the CPU decoder):")  # fmt: skip
        for r in gpu:
            g = r["gpu_decode"]
            lines.append(f"  {r['name']:22s} {g['kernel_ms']:8.3f} ms/chunk (rANS {g['entropy_ms']:.3f}, "
                         f"dequant {g['dequant_ms']:.3f}), {g['decode_melem_per_s']:9.1f} M elements/s, "
                         f"end to end {g['end_to_end_ms']:.3f} ms")  # fmt: skip
    t = res.get("targets", {})
    if t:
        lines.append("targets: " + json.dumps(t))
    return "\n".join(lines)
