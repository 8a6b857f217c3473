"""`kvcast profile reduce`: measure context-reduction levels (H2O, LLMLingua, and both combined
with codec levels) on the same contexts as a codec profile, and write a second profile holding
the base profile's levels and the new ones (docs/reduction.md).

Per context (the base profile's plan, same seeds and lengths, text digests checked):
capture the uncompressed KV in pieces, keeping every token's logits for its surprisal
(LLMLingua's score); the accumulated attention per layer and KV head (H2O's score) from a second
pass with eager attention; the same probes as the base profile. Then for each level:

- ``h2o-<p>[+X]``: per chunk, its importance tiers (`kvcast.kv.h2o.tiers`: top 25%, next 25%,
  the other 50%) up to p, each encoded and decoded on its own at X (fp16 without X); the decoded
  tiers of every chunk make the receiver's cache, measured with positions continuing after the
  full context (`dropped`).
- ``lingua-<p>``: the pruned text (`kvcast.kv.lingua`), prefilled chunk by chunk from scratch
  (its bytes: 4 per kept token; its cost: that prefill, timed); the cache it gives is measured.
- ``lingua-<p>+X``: that cache's chunks encoded and decoded at X, measured.

Bits per element are per element of the original chunk; decode speed is the original chunk's
elements per second of the reduced chunk's decode (so the simulator charges a reduced chunk by
the context it stands for). Errors: the codec's relative L2 error on the kept tokens (H2O), none
for LLMLingua (its KV is of another text).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvcast import __version__
from kvcast.chunks import TEXT_BYTES_PER_TOKEN
from kvcast.errors import InputError
from kvcast.kv.contexts import get_context
from kvcast.profile_format import CodecProfile, profile_from_dict, profile_to_dict
from kvcast.profiling.profile_measure import (
    MeasureConfig,
    RunInfo,
    _setup_threads,
    all_levels,
    encode_measured,
    level_summary,
    machine_text,
    run_in_workers,
    warm_up,
    with_model_tables,
)
from kvcast.reductions import H2O, LINGUA, TIER_PERCENTS, Reduction, parse_reduction

DEFAULT_LEVELS = (
    "h2o-50",
    "h2o-25",
    "h2o-50+cachegen-q2",
    "h2o-25+klt-mid",
    "h2o-50+klt-mid",
    "h2o-100+klt-mid",
    "lingua-50",
    "lingua-33",
    "lingua-50+klt-mid",
)
ATTENTION_PIECE = 256  # tokens per eager-attention pass (bounds the attention weights' memory)


@dataclass(frozen=True)
class ReduceConfig:
    """A reduction measurement: the base profile's measurement, and the levels to add."""

    base: MeasureConfig
    levels: tuple[str, ...] = DEFAULT_LEVELS
    profile_contexts: tuple[str, ...] = ()  # the base profile's, as its provenance lists them

    def plan(self) -> list[tuple[str, int]]:
        return self.base.context_plan()

    def reductions(self) -> list[Reduction]:
        return [parse_reduction(n) for n in self.levels]


def reduce_config(profile: CodecProfile, jobs: int, levels: tuple[str, ...] = ()) -> ReduceConfig:
    """The measurement of `levels` (default: DEFAULT_LEVELS) on `profile`'s own contexts."""
    cfg = ReduceConfig(base_config(profile, jobs), levels or DEFAULT_LEVELS,
                       profile.provenance.contexts)  # fmt: skip
    cfg.reductions()  # a bad level name fails before any measurement
    there = [n for n in cfg.levels if n in profile.level_names]
    if there:
        raise InputError(
            f"{profile.source}: already has level(s) {', '.join(there)}; reduce the profile they "
            "were added to, or ask for other levels (--levels)"
        )
    if cfg.base.device != "cpu":
        raise InputError(
            f"{profile.source}: measured with --device {cfg.base.device}; `kvcast profile "
            "reduce` times decoding on the CPU, so its levels would not compare with the "
            "profile's: reduce a CPU profile"
        )
    last = cfg.base.tokens % cfg.base.chunk_tokens
    if 0 < last < 3:
        raise InputError(
            f"{profile.source}: its contexts end in a chunk of {last} token(s) "
            f"({cfg.base.tokens} tokens in chunks of {cfg.base.chunk_tokens}), too few for three "
            "importance tiers; measure the base profile with another --tokens or --chunk-tokens"
        )
    return cfg


def base_config(profile: CodecProfile, jobs: int) -> MeasureConfig:
    """The `MeasureConfig` the base profile was measured with (recorded in its extra.config)."""
    raw = dict(profile.extra.get("config") or {})
    if not raw:
        raise InputError(
            f"{profile.source}: no extra.config (not written by `kvcast profile`); the reduction "
            "levels must be measured on the same contexts as the profile's"
        )
    fields = {f.name for f in dataclasses.fields(MeasureConfig)}
    raw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in fields}
    return dataclasses.replace(MeasureConfig(**raw), jobs=jobs, model_tables="", lmcache=False)


def _codec_levels(cfg: ReduceConfig) -> list[str]:
    return sorted({r.codec for r in cfg.reductions() if r.codec})


# ----------------------------------------------------------------------------- one context


def _chunk_row(tokens: int, elements: int, kept: int, parts: list[dict]) -> dict:
    """One chunk's figures (the base profile's per-chunk layout) from its encoded parts."""
    row = {k: sum(p[k] for p in parts) for k in parts[0]}
    return {"tokens": tokens, "elements": elements, "kept_tokens": kept, **row,
            "bits_per_element": row["bytes"] * 8 / elements}  # fmt: skip


def _capture(model, ids: list[int], piece: int):  # noqa: ANN001, ANN202
    """The context's KV and every token's surprisal, in one pass of pieces (each piece's logits
    are turned into surprisals at once: the whole [T, vocab] would take gigabytes)."""
    import torch

    from kvcast.kv.lingua import surprisal_from_logits  # deferred: imports torch

    kv, parts, last = None, [], None
    with model.recording_queries() as queries:
        for s in range(0, len(ids), piece):
            logits, kv = model.prefill(ids[s : s + piece], kv)
            if last is not None:  # the previous piece's last row predicts this piece's first
                logits = torch.cat([last, logits])
                parts.append(surprisal_from_logits(logits[:-1], ids[s - 1 : s + piece])[1:])
            else:
                parts.append(surprisal_from_logits(logits[:-1], ids[s : s + piece]))
            last = logits[-1:]
    gains = queries.key_gains(model.n_kv_heads) if queries.complete else None
    return kv.to(torch.float32), torch.cat(parts), gains


def measure_context(cfg: ReduceConfig, name: str, seed: int) -> dict:
    """Every reduction level's figures on one context (plain JSON-able data)."""
    import torch

    from kvcast.codec.model_tables import load_model_tables  # deferred: imports torch
    from kvcast.kv import h2o, lingua  # deferred: imports torch
    from kvcast.kv.sources import load_model  # deferred: imports torch
    from kvcast.profiling import quality as Q  # deferred: imports torch

    base = cfg.base
    _setup_threads(base.threads)
    tables = load_model_tables(base.model_tables) if base.model_tables else None
    t_start = time.perf_counter()
    model = load_model(base.model)
    ctx = get_context(name, base.tokens + base.n_continuation, model, seed)
    ids, cont = ctx.token_ids[: base.tokens], ctx.token_ids[base.tokens :]
    digest = hashlib.sha256(ctx.text.encode()).hexdigest()[:16]
    check_same_context(cfg, name, seed, len(ids), digest)
    c = time.process_time()
    ref, surprisal, gains = _capture(model, ids, base.prefill_piece)
    capture_s = time.process_time() - c
    probes = Q.make_probes(model, ref, cont, ctx, n_greedy=base.n_greedy, n_answer=base.n_answer)
    ref_raw = Q.measure(model, ref, probes, ctx)
    bounds = Q.chunk_bounds(len(ids), base.chunk_tokens)
    # H2O's attention pass (a second prefill, eager attention) only when an H2O level needs it
    last = len(bounds) - 1
    tier_index, scores_s = [], 0.0
    if any(red.method == H2O for red in cfg.reductions()):
        c = time.process_time()
        scores = model.attention_received(ids, piece=ATTENTION_PIECE)
        scores_s = time.process_time() - c
        tier_index = [
            h2o.tiers(scores[:, s:e], [p / 100 for p in TIER_PERCENTS], recent=i == last)
            for i, (s, e) in enumerate(bounds)
        ]
    elements = [int(ref[:, :, s:e].numel()) for s, e in bounds]
    t_scores = time.perf_counter() - t_start
    warm_up(["fp16", *_codec_levels(cfg)], ref, gains, tables)

    def quality_of(cache: torch.Tensor, dropped: int) -> dict:
        raw = Q.measure(model, cache, probes, ctx, dropped=dropped)
        return Q.quality_figures(raw, ref_raw, probes.ref_correct)

    # H2O: every chunk's tiers, encoded once per codec level and shared by the levels using them
    tier_cache: dict[tuple[str, int, int], tuple[torch.Tensor, dict, int]] = {}

    def tier(level: str, i: int, m: int) -> tuple[torch.Tensor, dict, int]:
        """Tier m of chunk i at `level`: decoded, its figures, its tokens (per head)."""
        key = (level, i, m)
        if key not in tier_cache:
            s, e = bounds[i]
            part = h2o.gather(ref[:, :, s:e], tier_index[i][m]).contiguous()
            out, fig = encode_measured(part, level, key_gains=gains, first=i == 0 and m == 0,
                                       tables=tables)  # fmt: skip
            tier_cache[key] = (out, fig, int(part.shape[2]))
        return tier_cache[key]

    # LLMLingua: the pruned text per keep ratio, prefilled chunk by chunk (timed)
    pruned: dict[int, tuple[torch.Tensor, list[tuple[int, int]], list[dict]]] = {}

    def lingua_cache(percent: int):  # noqa: ANN202
        if percent not in pruned:
            mask = lingua.keep_mask(surprisal, bounds, percent / 100,
                                    instruction_tokens=ctx.instruction_tokens)  # fmt: skip
            kept = [t for t, k in zip(ids, mask.tolist(), strict=True) if k]
            new_bounds = lingua.kept_bounds(mask, bounds)
            kv, rows = None, []
            for (s, e), (ks, ke), n_el in zip(bounds, new_bounds, elements, strict=True):
                c = time.process_time()
                _, kv = model.prefill(kept[ks:ke], kv, logits_to_keep=1)
                rows.append({"tokens": e - s, "elements": n_el, "kept_tokens": ke - ks,
                             "prefill_s": time.process_time() - c})  # fmt: skip
            pruned[percent] = (kv.to(torch.float32), new_bounds, rows)
        return pruned[percent]

    levels: dict[str, dict] = {}
    for red in cfg.reductions():
        codec = red.codec or "fp16"
        if red.method == H2O:
            per_chunk, decoded = [], []
            for i, (s, e) in enumerate(bounds):
                parts = [tier(codec, i, m) for m in range(len(red.tier_percents))]
                decoded.append(torch.cat([p[0] for p in parts], dim=2))
                scoring = _scoring_cost(scores_s * (e - s) / len(ids))
                kept = sum(p[2] for p in parts)
                per_chunk.append(
                    _chunk_row(e - s, elements[i], kept, [p[1] for p in parts] + [scoring])
                )
            cache = torch.cat(decoded, dim=2)
            quality = quality_of(cache, dropped=len(ids) - cache.shape[2])
        else:
            kv, new_bounds, rows = lingua_cache(red.percent)
            if red.payload == "text":
                per_chunk = [_text_row(r, capture_s * r["tokens"] / len(ids)) for r in rows]
                quality = quality_of(kv, dropped=0)
            else:
                per_chunk, decoded = [], []
                for i, ((ks, ke), r) in enumerate(zip(new_bounds, rows, strict=True)):
                    out, fig = encode_measured(kv[:, :, ks:ke].contiguous(), codec,
                                               key_gains=gains, first=i == 0, tables=tables)  # fmt: skip
                    decoded.append(out)
                    scoring = _scoring_cost(capture_s * r["tokens"] / len(ids))
                    per_chunk.append(
                        _chunk_row(r["tokens"], r["elements"], ke - ks, [fig, scoring])
                    )
                quality = quality_of(torch.cat(decoded, dim=2), dropped=0)
        levels[red.name] = {"chunks": per_chunk, "quality": quality}
    return {
        "context": name,
        "seed": seed,
        "tokens": len(ids),
        "text_sha256": digest,
        "instruction_tokens": ctx.instruction_tokens,
        "ref": {**ref_raw.to_dict(), "ref_correct": probes.ref_correct},
        "levels": levels,
        "seconds": {"scores": t_scores, "total": time.perf_counter() - t_start},
    }


def _cost(nbytes: int = 0, encode_s: float = 0.0, decode_s: float = 0.0) -> dict:
    """A part's figures in `encode_measured`'s layout, for a part with no codec error."""
    return {"bytes": nbytes, "payload_bytes": nbytes, "encode_s": encode_s, "decode_s": decode_s,
            "encode_wall_s": encode_s, "decode_wall_s": decode_s, "err2_k": 0.0, "err2_v": 0.0,
            "ref2_k": 0.0, "ref2_v": 0.0}  # fmt: skip


def _scoring_cost(seconds: float) -> dict:
    """The sender's share of a scoring pass (attention for H2O, surprisal for LLMLingua) for
    one chunk, as an encode cost: the reduction is chosen with the model's help."""
    return _cost(encode_s=seconds)


def _text_row(r: dict, scoring_s: float) -> dict:
    """A pruned-text chunk's figures: its token ids' bytes, its share of the surprisal pass as
    its encode cost; 'decoding' it is its prefill."""
    ids = _cost(r["kept_tokens"] * TEXT_BYTES_PER_TOKEN, decode_s=r["prefill_s"])
    return _chunk_row(r["tokens"], r["elements"], r["kept_tokens"], [ids, _scoring_cost(scoring_s)])


def run_contexts(cfg: ReduceConfig, say: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Measure every context of `cfg` (in the base's `jobs` processes); results in plan order."""
    from kvcast.codec.codec import default_ladder  # deferred: imports torch

    ladder = default_ladder()
    specs = [ladder.get(n) for n in _codec_levels(cfg)]  # fails early on an unknown level
    if any(getattr(s, "needs_model_tables", False) for s in specs):
        # the model tables the base profile was measured with: fitted for its levels
        fitted = [ladder.get(n) for n in all_levels(cfg.base)]
        fitted += [s for s in specs if s.name not in {f.name for f in fitted}]
        cfg = dataclasses.replace(cfg, base=with_model_tables(cfg.base, fitted, say))
    jobs = [(cfg, name, seed) for name, seed in cfg.plan()]
    return run_in_workers(measure_context, jobs, cfg.base.jobs, cfg.base.threads, say, _progress)


def _progress(i: int, n: int, res: dict, t0: float) -> str:
    q = {k: round(v["quality"]["normalized"], 3) for k, v in res["levels"].items()}
    return (f"[{i + 1}/{n}] {res['context']} seed {res['seed']}: {res['seconds']['total']:.0f} s "
            f"(elapsed {time.perf_counter() - t0:.0f} s); quality {q}")  # fmt: skip


# ----------------------------------------------------------------------------- the profile


def check_same_context(cfg: ReduceConfig, name: str, seed: int, tokens: int, digest: str) -> None:
    """The context measured here must be the base profile's (name, seed, length, text digest):
    the new levels compare with its levels only on the same text."""
    want = f"{name} seed={seed} tokens={tokens} sha256={digest}"
    if not any(c.startswith(want) for c in cfg.profile_contexts):
        raise InputError(
            f"context {want!r} is not among the codec profile's contexts "
            f"({'; '.join(cfg.profile_contexts[:2])}, ...): the reduction levels must be measured "
            "on the profile's own contexts (same model, tokenizer and context texts)"
        )


def build_profile(
    base: CodecProfile, cfg: ReduceConfig, results: list[dict], info: RunInfo, name: str
) -> CodecProfile:
    """The base profile plus one level of kind "reduction" per measured reduction level."""
    if not results:
        raise InputError("no contexts were measured")
    doc = profile_to_dict(base)
    if len(results) != len(base.provenance.contexts):  # compare on the same contexts only
        raise InputError(
            f"{len(results)} contexts measured, the base profile has "
            f"{len(base.provenance.contexts)}: a profile mixing levels measured on different "
            "contexts would compare them unfairly; measure all of them"
        )
    for red in cfg.reductions():
        lv = level_summary(red.name, results)
        lv["kind"] = "reduction"
        lv["payload"] = red.payload
        chunks = [c for r in results for c in r["levels"][red.name]["chunks"]]
        lv["tokens_kept"] = sum(c["kept_tokens"] for c in chunks) / sum(c["tokens"] for c in chunks)
        lv["extra"]["reduction"] = {"method": red.method, "percent": red.percent,
                                    "codec": red.codec}  # fmt: skip
        if red.method == LINGUA:
            lv["rel_l2_error"] = None
        doc["levels"].append(lv)
    doc["name"] = name
    doc["provenance"] = {
        **doc["provenance"],
        "command": f"{base.provenance.command}; then {info.command}",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kvcast_version": __version__,
        "notes": doc["provenance"].get("notes", "")
        + f" Reduction levels (kind 'reduction', docs/reduction.md) measured later on the same "
        f"contexts: machine {machine_text()}, wall time {info.wall_s:.0f} s with "
        f"{cfg.base.jobs} worker(s).",
    }
    doc.setdefault("extra", {})["reductions"] = {
        "levels": list(cfg.levels),
        "base_profile": base.name,
        "wall_s": info.wall_s,
        "per_context_seconds": [round(r["seconds"]["total"], 1) for r in results],
    }
    return profile_from_dict(doc, source="kvcast profile reduce")
