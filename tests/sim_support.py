"""Test data shared by the simulator tests: small, hand-written codec profiles (clearly test data,
not measurements) and helpers to write them. No tests here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tiny_profile_doc(
    *,
    kv_elements_per_token: int = 1000,
    bits: dict[str, float] | None = None,
    quality: dict[str, float] | None = None,
    decode_melem_per_s: float = 1000.0,
    samples: bool = False,
) -> dict[str, Any]:
    """A valid profile document for a made-up 10-layer model (TEST DATA, not a measurement).

    kv_elements_per_token = 10 layers * 2 * 5 heads * 10 dims = 1000 by default."""
    bits = bits or {"hi": 8.0, "mid": 4.0, "lo": 2.0, "fp16": 16.0, "int8": 8.5}
    quality = quality or {"hi": 1.0, "mid": 0.95, "lo": 0.8, "fp16": 1.0, "int8": 0.999}
    levels = []
    for name, b in bits.items():
        kind = "baseline" if name in ("fp16", "int8") else "cachegen"
        bpe: dict[str, Any] = {"mean": b, "p5": b, "p50": b, "p95": b}
        q: dict[str, Any] = {"normalized": quality[name]}
        if samples:
            bpe["samples"] = [b * 0.9, b, b * 1.1]
            bpe["p5"], bpe["p95"] = b * 0.9, b * 1.1
            q["per_chunk"] = [quality[name]] * 3
        levels.append(
            {
                "name": name,
                "kind": kind,
                "bits_per_element": bpe,
                "quality": q,
                "encode_melem_per_s": 100.0,
                "decode_melem_per_s": decode_melem_per_s,
            }
        )
    heads = kv_elements_per_token // (10 * 2 * 10)
    return {
        "format": "kvcast-codec-profile",
        "version": 1,
        "name": "test-tiny",
        "model": {
            "id": "test-model",
            "n_layers": 10,
            "n_kv_heads": heads,
            "head_dim": 10,
            "kv_elements_per_token": 10 * 2 * heads * 10,
        },
        "device": {"name": "cpu", "cores": 2},
        "chunk_tokens": 100,
        "levels": levels,
        "text": {"quality": 1.0},
        "prefill": {
            "points": [
                {"context_tokens": 100, "tokens_per_s": 1000.0},
                {"context_tokens": 1000, "tokens_per_s": 1000.0},
            ]
        },
        "provenance": {
            "command": "hand-written test data",
            "date": "2026-11-28",
            "kvcast_version": "0.1.0",
        },
    }


def write_profile(tmp_path: Path, doc: dict[str, Any], name: str = "tiny.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def with_reductions(doc: dict[str, Any], *, samples: bool = False) -> dict[str, Any]:
    """`doc` (a `tiny_profile_doc`) plus context-reduction levels (TEST DATA): the importance
    tiers of `mid` (h2o-25/50/100+mid: a quarter, half and all of its bits and decode work) and
    a pruned-text level (lingua-50: half the tokens as token ids)."""
    mid = next(lv for lv in doc["levels"] if lv["name"] == "mid")
    bits, rate = mid["bits_per_element"]["mean"], mid["decode_melem_per_s"]
    spec = [("h2o-25+mid", 0.25, 0.85), ("h2o-50+mid", 0.5, 0.92), ("h2o-100+mid", 1.0, 0.95)]
    out = dict(doc, levels=list(doc["levels"]))
    for name, share, q in spec:
        b = bits * share
        bpe: dict[str, Any] = {"mean": b, "p5": b, "p50": b, "p95": b}
        if samples:
            bpe.update(samples=[b * 0.9, b, b * 1.1], p5=b * 0.9, p95=b * 1.1)
        out["levels"].append({
            "name": name, "kind": "reduction", "bits_per_element": bpe,
            "quality": {"normalized": q}, "encode_melem_per_s": 100.0,
            "decode_melem_per_s": rate / share, "tokens_kept": share,
        })  # fmt: skip
    b = 4 * 8 * 0.5 / doc["model"]["kv_elements_per_token"]
    out["levels"].append({
        "name": "lingua-50", "kind": "reduction", "payload": "text", "tokens_kept": 0.5,
        "bits_per_element": {"mean": b, "p5": b, "p50": b, "p95": b},
        "quality": {"normalized": 0.6}, "encode_melem_per_s": 100.0, "decode_melem_per_s": 1.0,
    })  # fmt: skip
    return out


def scenario_doc(profile_path: Path, **over: Any) -> dict[str, Any]:
    """A small valid scenario using `profile_path` (TEST DATA)."""
    doc: dict[str, Any] = {
        "name": "test",
        "seed": 0,
        "slo_s": 0.01,
        "model": "profile",
        "gpu": "profile",
        "profile": str(profile_path),
        "chunk_tokens": 100,
        "workload": {
            "requests": 3,
            "arrival": {"process": "fixed", "interval_s": 1.0},
            "context_tokens": 300,
        },
        "link": {"kind": "per_chunk", "low_gbps": 1.0, "high_gbps": 1.0},
        "controllers": [
            "cachegen",
            "cachegen-artifact",
            "bba",
            "mpc",
            "fixed:mid",
            "text",
            "raw",
            "int8",
            "oracle",
        ],
    }
    doc.update(over)
    return doc


def overlapping_scenario_doc(profile_path: Path, requests: int = 4, **over: Any) -> dict[str, Any]:
    """`scenario_doc` with 2 seeds, a stepped link and Poisson arrivals far faster than a request
    takes, so requests share the link and the GPU (TEST DATA: runs whose units must agree)."""
    doc = {
        "seed": [0, 1],
        "link": {"synthetic": {"kind": "steps", "mbps": [400, 100], "durations_s": 0.002}},
        "workload": {
            "requests": requests,
            "arrival": {"process": "poisson", "rate_per_s": 500.0},
            "context_tokens": 300,
        },
    }
    return scenario_doc(profile_path, **{**doc, **over})


def write_scenario(tmp_path: Path, doc: dict[str, Any], name: str = "sc.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def profile_coster(doc: dict[str, Any]) -> tuple[Any, Any]:
    """(profile, ProfileCoster) for a profile document: its measured prefill and decode speeds,
    1,000 KV elements per token, 100-token chunks (the engine tests' set-up)."""
    from kvcast.profile_format import profile_from_dict
    from kvcast.sim.costs import ProfileCoster
    from kvcast.sim.receiver import DecodeRates, MeasuredPrefill, Receiver

    prof = profile_from_dict(doc)
    rcv = Receiver(
        MeasuredPrefill.from_profile(prof),
        DecodeRates({lv.name: lv.decode_melem_per_s for lv in prof.levels}, "test profile"),
        "t",
    )
    return prof, ProfileCoster(prof, 1000, rcv, 100)
