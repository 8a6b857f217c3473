"""What a scenario's runs are built from: what every case shares (`Setup`: the codec profile,
the receiver, the chunk coster, the adaptive ladder, the traces) and each case's own inputs
(`CaseInputs`: its requests, their chunk costs and its path), drawn from the case's seed.

Per case (trace x SLO x seed) the workload, the chunk costs and the per-chunk bandwidths are drawn
once from the case's seed and shared by every controller, so that controllers differ only by their
decisions. Random streams come from `numpy.random.SeedSequence(seed)`; nothing else is random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.chunks import TEXT_LEVEL
from kvcast.errors import InputError
from kvcast.profile_format import CodecProfile, load_profile
from kvcast.reductions import importance_tiers

from . import presets
from .costs import MeasuredCoster, ProfileCoster, RequestCosts
from .engine import Request
from .levels import adaptive_ladder
from .network import PerChunkPath, TraceLinkPath
from .receiver import DecodeRates, DecodeTimes, MeasuredDecode, MeasuredPrefill, Receiver
from .scenario import Case, Scenario
from .traceref import build_trace
from .workload import make_requests


@dataclass
class Setup:
    """What every case of a scenario shares: the profile, the receiver and the chunk coster."""

    profile: CodecProfile
    receiver: Receiver
    coster: ProfileCoster | MeasuredCoster  # request_costs(context_tokens, rng)
    ladder: tuple[str, ...]  # the adaptive ladder (sim.levels), largest first
    warnings: tuple[str, ...] = ()  # where the profile is used outside what it measured
    traces: dict[str, Any] = field(default_factory=dict)  # trace ref -> Trace, built once


def build_setup(sc: Scenario, chunk_costs: ChunkCostTable | None = None) -> Setup:
    """Profile, receiver and coster of a scenario; `costing: real_codec` needs `chunk_costs`
    (a chunk-cost file's table: `kvcast run` measures it with kvcast.profiling.chunk_costs)."""
    try:
        profile = load_profile(sc.profile)
    except InputError as exc:
        raise InputError(f"{sc.source}: field 'profile': {exc}") from None
    on_gpu_preset = sc.model != "profile"
    decode: DecodeTimes
    if sc.costing == "real_codec":
        if chunk_costs is None:
            raise InputError(
                f"{sc.source}: field 'costing': real_codec needs the measured chunk costs: run it "
                "with `kvcast run`, which measures them (kvcast.profiling.chunk_costs) first"
            )
        ctx = sc.workload.context_tokens
        if ctx.kind != "fixed" or ctx.values[0] != sum(chunk_costs.tokens):
            raise InputError(
                f"{sc.source}: field 'workload.context_tokens': with 'costing: real_codec' every "
                f"request is the captured context: expected {sum(chunk_costs.tokens)} "
                "(real_codec.tokens)"
            )
        decode = MeasuredDecode.from_table(chunk_costs)
    elif sc.receiver.decode_melem_per_s == "profile":
        measured_on = profile.device.name
        if on_gpu_preset and not measured_on.lower().startswith("cuda"):
            raise InputError(
                f"{sc.source}: field 'receiver.decode_melem_per_s': 'profile' would take the codec "
                f"decode speed measured on {measured_on!r} (profile {profile.name}) for a "
                f"{sc.gpu} receiver; give a GPU codec profile (kvcast profile --device cuda) or "
                "a number of million elements per second (an estimate, reported as assumed)"
            )
        decode = DecodeRates(
            {lv.name: lv.decode_melem_per_s for lv in profile.levels},
            f"codec decode measured on {measured_on} (profile {profile.name})",
        )
    else:
        # a reduced level decodes only the tokens it kept: per element of the original chunk
        # (the unit the simulator charges), it goes 1 / tokens_kept as fast
        decode = DecodeRates(
            {
                lv.name: float(sc.receiver.decode_melem_per_s) / lv.tokens_kept
                for lv in profile.levels
            },
            f"codec decode ASSUMED {sc.receiver.decode_melem_per_s:g} Melem/s "
            "(scenario estimate, not measured)",
        )
    dec_src = decode.source
    if sc.model == "profile":
        prefill: Any = MeasuredPrefill.from_profile(profile)
        kv_elem = profile.model.kv_elements_per_token
        desc = f"{profile.model.id} on {profile.device.name}, prefill measured; {dec_src}"
    else:
        model = presets.get_model(sc.model)
        gpu = presets.get_gpu(sc.gpu)
        prefill = presets.GpuTimeModel(
            model,
            gpu,
            sc.receiver.gpu_count,
            sc.receiver.prefill_efficiency,
            sc.receiver.memory_efficiency,
        )
        kv_elem = model.kv_elements_per_token
        desc = (
            f"{model.name} on {sc.receiver.gpu_count}x {gpu.name}, prefill from FLOPs at "
            f"{sc.receiver.prefill_efficiency:g} of peak; {dec_src}"
        )
    receiver = Receiver(prefill, decode, desc)
    coster: ProfileCoster | MeasuredCoster
    if chunk_costs is not None and sc.costing == "real_codec":
        coster = MeasuredCoster(chunk_costs, profile, receiver, f"{sc.source}: field 'real_codec'")
    else:
        coster = ProfileCoster(profile, kv_elem, receiver, sc.chunk_tokens)
    traces = {}
    if sc.link.kind == "trace":
        for ref in sc.link.traces:  # built once; a bad trace fails here, before any case runs
            try:
                traces[ref] = build_trace(sc.link, ref)
            except InputError as exc:
                raise InputError(f"{sc.source}: field {exc}") from None
    ladder = adaptive_ladder(profile, sc.levels, f"{sc.source}: field 'levels'")
    for i, name in enumerate(sc.controllers):
        kind, _, level = name.partition(":")
        needs: tuple[str, ...] = ()
        if kind == "fixed" and level != TEXT_LEVEL:
            needs = (level,)
        elif kind == "importance" and level:
            needs = importance_tiers(level)
        missing = [n for n in needs if n not in profile.level_names]
        where = f"{sc.source}: field 'controllers[{i}]': {name!r}: codec profile {profile.name}"
        if missing:
            hint = "; `kvcast profile reduce` measures the tiers" if kind == "importance" else ""
            raise InputError(
                f"{where} has no level {missing[0]!r} (levels: "
                f"{', '.join(profile.level_names)}{hint})"
            )
        if kind == "importance" and level:
            check_tiers(profile, needs, where)
    return Setup(profile, receiver, coster, ladder, profile_mismatches(sc, profile), traces)


def check_tiers(profile: CodecProfile, tiers: tuple[str, ...], where: str) -> None:
    """Importance tiers must add to one another chunk by chunk: the same profiled chunks (as many
    samples) and more bits at every sample, tier after tier."""
    lvs = [profile.level(t) for t in tiers]
    for a, b in zip(lvs, lvs[1:], strict=False):
        sa, sb = a.bits_per_element.samples, b.bits_per_element.samples
        if len(sa) != len(sb) or not all(x < y for x, y in zip(sa, sb, strict=True)):
            raise InputError(
                f"{where}: level {b.name!r} does not hold more than {a.name!r} at every profiled "
                "chunk (as many samples, more bits each): not importance tiers measured together "
                "by `kvcast profile reduce`"
            )


def profile_mismatches(sc: Scenario, profile: CodecProfile) -> tuple[str, ...]:
    """Where the scenario uses the codec profile beyond what it measured: said in the table and
    the report, since the figures then rest on an extrapolation."""
    out = []
    if sc.costing == "profile" and sc.chunk_tokens != profile.chunk_tokens:
        out.append(
            f"the codec profile {profile.name} was measured on {profile.chunk_tokens}-token "
            f"chunks and this scenario cuts {sc.chunk_tokens}-token chunks: its bits per element "
            "and qualities are taken as they are"
        )
    ctx = sc.workload.context_tokens
    longest = ctx.values[-1] if ctx.kind == "uniform" else max(ctx.values)
    measured = max((p.context_tokens for p in profile.prefill), default=0)
    if sc.model == "profile" and longest > measured:
        out.append(
            f"contexts reach {longest} tokens but the profile measured prefill only up to "
            f"{measured}: TEXT prefill beyond that assumes its last measured speed"
        )
    return tuple(out)


@dataclass
class CaseInputs:
    case: Case
    requests: list[Request]
    costs: list[RequestCosts]
    make_path: Callable[[Any], Any]
    trace: Any | None


def case_inputs(sc: Scenario, setup: Setup, case: Case) -> CaseInputs:
    ss = np.random.SeedSequence(case.seed)
    wl_rng, cost_rng, bw_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    requests = make_requests(sc.workload, case.slo_s, wl_rng)
    costs = [setup.coster.request_costs(r.context_tokens, cost_rng) for r in requests]
    link = sc.link
    if link.kind == "per_chunk":
        bws = [
            (bw_rng.uniform(link.low_gbps, link.high_gbps, size=c.n_chunks) * 1e9).tolist()
            for c in costs
        ]
        delay = link.delay_s
        return CaseInputs(case, requests, costs, lambda env: PerChunkPath(env, bws, delay), None)

    trace = setup.traces[case.trace]
    opts: dict[str, Any] = {"mode": link.mode, "delay_s": link.delay_s, "queue": link.queue}
    if link.queue_bytes is not None:
        opts["queue_bytes"] = link.queue_bytes
    if link.queue_packets is not None:
        opts["queue_packets"] = link.queue_packets
    return CaseInputs(case, requests, costs, lambda env: TraceLinkPath(env, trace, **opts), trace)
