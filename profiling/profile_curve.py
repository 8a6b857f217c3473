"""The bits-vs-quality curve of a codec profile: a text table and an interactive Plotly figure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kvcast.errors import InputError
from kvcast.profile_format import CodecProfile, LevelProfile


@dataclass(frozen=True)
class PeerPoint:
    """A peer codec measured elsewhere (bits, error; quality unknown), e.g. LMCache's CacheGen."""

    name: str
    bits_per_element: float
    rel_l2_k: float | None = None
    rel_l2_v: float | None = None
    note: str = ""
    quality: float | None = None  # normalized, when measured with the real model
    perplexity_ratio: float | None = None
    greedy_agreement: float | None = None


def profile_peers(profile: CodecProfile) -> list[PeerPoint]:
    """Peers measured by `kvcast profile --lmcache` (the profile's `extra.peers`)."""
    peers = profile.extra.get("peers") or {}
    if not isinstance(peers, dict):
        raise InputError(f"{profile.source}: field 'extra.peers': expected an object")
    out = []
    for name, p in peers.items():
        try:
            q, err = p["quality"], p.get("rel_l2_error") or {}
            n = len(p["bits_per_element"].get("samples", []))
            out.append(
                PeerPoint(
                    name=name,
                    bits_per_element=float(p["bits_per_element"]["mean"]),
                    rel_l2_k=err.get("k"),
                    rel_l2_v=err.get("v"),
                    note=f"{p.get('description', '')}; {n} chunks",
                    quality=float(q["normalized"]),
                    perplexity_ratio=q.get("perplexity_ratio"),
                    greedy_agreement=q.get("greedy_agreement"),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{profile.source}: field 'extra.peers.{name}': {exc!r}") from exc
    return out


def lmcache_point(bench_json: str | Path) -> PeerPoint:
    """LMCache's CacheGen point from a `kvcast bench codec --json` file."""
    path = Path(bench_json)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--bench {path}: not a readable JSON file ({exc})") from exc
    lm = doc.get("lmcache") if isinstance(doc, dict) else None
    if not isinstance(lm, dict) or lm.get("status") != "ok":
        why = lm.get("status") if isinstance(lm, dict) else "no 'lmcache' object"
        raise InputError(f"--bench {path}: field 'lmcache': no LMCache measurement ({why})")
    err = lm.get("rel_l2_error") or {}
    return PeerPoint(
        name="lmcache-cachegen",
        bits_per_element=float(lm["bits_per_element"]["total"]),
        rel_l2_k=err.get("k"),
        rel_l2_v=err.get("v"),
        note=str(lm.get("description", "")),
    )


def _ratio(profile: CodecProfile, lv_bits: float) -> float | None:
    try:
        return profile.level("int8").bits_per_element.mean / lv_bits
    except InputError:
        return None


def _f(x: float | None, fmt: str) -> str:
    if x is None:
        return format("-", re.match(r"[<>^]?\d*", fmt).group())
    return format(x, fmt)


def curve_rows(profile: CodecProfile) -> list[dict]:
    """One row per level and baseline, as printed and plotted."""
    rows = []
    for lv in profile.levels:
        q = lv.quality
        rows.append(
            {
                "name": lv.name,
                "kind": lv.kind,
                "bits": lv.bits_per_element.mean,
                "p5": lv.bits_per_element.p5,
                "p95": lv.bits_per_element.p95,
                "x_int8": _ratio(profile, lv.bits_per_element.mean),
                "quality": q.normalized,
                "ppl_ratio": q.perplexity_ratio,
                "greedy": q.greedy_agreement,
                "retrieval": q.retrieval_accuracy,
                "l2_k": lv.rel_l2_error.k if lv.rel_l2_error else None,
                "l2_v": lv.rel_l2_error.v if lv.rel_l2_error else None,
                "enc": lv.encode_melem_per_s,
                "dec": lv.decode_melem_per_s,
            }
        )
    return rows


def curve_table(profile: CodecProfile, peers: list[PeerPoint] | None = None) -> str:
    """The bits-vs-quality table as text."""
    head = (
        f"{'level':<18} {'kind':<9} {'bits/elem':>9} {'p5-p95':>13} {'x int8':>7} "
        f"{'quality':>8} {'ppl x':>7} {'greedy':>7} {'retr':>6} {'L2 K':>6} {'L2 V':>6} "
        f"{'enc':>6} {'dec':>6}"
    )
    lines = [
        f"codec profile {profile.name or profile.source}: {profile.model.id} on "
        f"{profile.device.name}, {profile.chunk_tokens}-token chunks, "
        f"{len(profile.levels[0].bits_per_element.samples)} chunks",
        head,
    ]
    for r in curve_rows(profile):
        lines.append(
            f"{r['name']:<18} {r['kind']:<9} {r['bits']:>9.3f} "
            f"{r['p5']:>6.3f}-{r['p95']:<6.3f} {_f(r['x_int8'], '>7.2f')} "
            f"{r['quality']:>8.4f} {_f(r['ppl_ratio'], '>7.4f')} {_f(r['greedy'], '>7.3f')} "
            f"{_f(r['retrieval'], '>6.2f')} {_f(r['l2_k'], '>6.3f')} {_f(r['l2_v'], '>6.3f')} "
            f"{r['enc']:>6.1f} {r['dec']:>6.1f}"
        )
    for p in peers or []:
        ratio = _ratio(profile, p.bits_per_element)
        lines.append(
            f"{p.name:<18} {'peer':<9} {p.bits_per_element:>9.3f} {'':>13} "
            f"{_f(ratio, '>7.2f')} {_f(p.quality, '>8.4f')} "
            f"{_f(p.perplexity_ratio, '>7.4f')} {_f(p.greedy_agreement, '>7.3f')} {'':>6} "
            f"{_f(p.rel_l2_k, '>6.3f')} {_f(p.rel_l2_v, '>6.3f')}"
        )
    lines.append(
        "quality: normalized, uncompressed = 1.0 (docs/quality.md); ppl x: perplexity ratio; "
        "greedy: agreement of the 32-token greedy continuation; retr: retrieval accuracy where "
        "the uncompressed cache is right; enc/dec: million elements/s"
    )
    return "\n".join(lines)


def _hover(lv: LevelProfile, r: dict) -> str:
    return "<br>".join(
        [
            f"<b>{lv.name}</b> ({lv.kind})",
            f"bits/element {r['bits']:.3f} (p5 {r['p5']:.3f}, p95 {r['p95']:.3f})",
            f"smaller than int8: {_f(r['x_int8'], '.2f')}x",
            f"normalized quality {r['quality']:.4f}",
            f"perplexity ratio {_f(r['ppl_ratio'], '.4f')}",
            f"greedy agreement {_f(r['greedy'], '.3f')}",
            f"retrieval accuracy {_f(r['retrieval'], '.2f')}",
            f"rel L2 K {_f(r['l2_k'], '.3f')}, V {_f(r['l2_v'], '.3f')}",
            f"encode {r['enc']:.1f}, decode {r['dec']:.1f} Melem/s",
        ]
    )


def curve_figure(profile: CodecProfile, peers: list[PeerPoint] | None = None):
    """Plotly figure: bits per element (x, log) against normalized quality (y)."""
    import plotly.graph_objects as go

    rows = {r["name"]: r for r in curve_rows(profile)}
    fig = go.Figure()
    names = {"cachegen": "kvcast levels", "baseline": "baselines",
             "reduction": "context reduction (H2O, LLMLingua)"}  # fmt: skip
    for kind, mode, symbol in (("cachegen", "lines+markers", "circle"),
                               ("baseline", "markers", "diamond"),
                               ("reduction", "markers", "square")):  # fmt: skip
        lvs = [lv for lv in profile.levels if lv.kind == kind]
        if kind == "cachegen":
            lvs.sort(key=lambda lv: lv.bits_per_element.mean)
        if not lvs:
            continue
        rs = [rows[lv.name] for lv in lvs]
        fig.add_trace(
            go.Scatter(
                x=[r["bits"] for r in rs],
                y=[r["quality"] for r in rs],
                mode=mode + "+text",
                text=[lv.name for lv in lvs],
                textposition="top center",
                marker={"size": 10, "symbol": symbol},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [r["p95"] - r["bits"] for r in rs],
                    "arrayminus": [r["bits"] - r["p5"] for r in rs],
                },
                hovertext=[_hover(lv, rows[lv.name]) for lv in lvs],
                hoverinfo="text",
                name=names[kind],
            )
        )
    for p in peers or []:
        if p.quality is not None:
            fig.add_trace(
                go.Scatter(
                    x=[p.bits_per_element],
                    y=[p.quality],
                    mode="markers+text",
                    text=[p.name],
                    textposition="bottom center",
                    marker={"size": 12, "symbol": "x"},
                    hovertext=[
                        f"<b>{p.name}</b> (peer)<br>{p.note}<br>bits/element "
                        f"{p.bits_per_element:.3f}<br>normalized quality {p.quality:.4f}<br>"
                        f"perplexity ratio {_f(p.perplexity_ratio, '.4f')}<br>greedy agreement "
                        f"{_f(p.greedy_agreement, '.3f')}<br>rel L2 K {_f(p.rel_l2_k, '.3f')}, "
                        f"V {_f(p.rel_l2_v, '.3f')}"
                    ],
                    hoverinfo="text",
                    name=p.name,
                )
            )
            continue
        fig.add_vline(
            x=p.bits_per_element,
            line_dash="dash",
            annotation_text=f"{p.name} ({p.bits_per_element:.2f} bits; quality not measured)",
        )
    fig.add_hline(y=0.98, line_dash="dot", annotation_text="0.98 (CacheGen: at most 2% drop)")
    fig.update_layout(
        title=f"{profile.model.id} on {profile.device.name}: bits per KV element vs quality",
        xaxis={"title": "bits per KV element (all bytes; p5-p95 bars)", "type": "log"},
        yaxis={"title": "normalized quality (uncompressed = 1.0)"},
        template="plotly_white",
    )
    return fig


def curve_html(
    profile: CodecProfile, path: str | Path, peers: list[PeerPoint] | None = None
) -> Path:
    """Write the interactive figure as a self-contained HTML file (works offline)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve_figure(profile, peers).write_html(str(out), include_plotlyjs=True, full_html=True)
    return out
