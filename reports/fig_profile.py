"""The codec profile's curve: bits per KV element against quality, levels used in the run first.

It answers "what did each level cost and buy" next to "which levels did controllers pick".
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvcast.chunks import TEXT_LEVEL
from kvcast.reports.run_folder import RunData
from kvcast.reports.style import levels_of, subtitle


def _num(d: object, key: str) -> float:
    value = d.get(key) if isinstance(d, dict) else None
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _what(level: dict) -> str:
    """A level's kind in words (context-reduction levels: what they keep and send)."""
    kind = str(level.get("kind", "level"))
    if kind != "reduction":
        return kind
    kept = level.get("tokens_kept")
    sends = "pruned text" if level.get("payload") == "text" else "KV"
    share = f", {float(kept):.0%} of the tokens" if isinstance(kept, (int, float)) else ""
    return f"context reduction: sends {sends}{share}"


def profile_curve(run: RunData) -> go.Figure:
    levels = levels_of(run)
    chunk_counts = run.chunks["level"].value_counts()
    total = max(int(chunk_counts.sum()), 1)
    fig = go.Figure()
    entries = run.profile["levels"]
    for used in (False, True):
        xs, ys, names, custom, colors, what = [], [], [], [], [], []
        for level in entries:
            name = level["name"]
            n_used = int(chunk_counts.get(name, 0))
            if (n_used > 0) != used:
                continue
            bpe, quality = level["bits_per_element"], level["quality"]
            mean = float(bpe["mean"])
            xs.append(mean)
            ys.append(float(quality["normalized"]))
            names.append(name)
            what.append(_what(level))
            p5, p95 = _num(bpe, "p5"), _num(bpe, "p95")
            custom.append([p5, p95, n_used, n_used / total, mean - p5, p95 - mean])
            colors.append(levels.colors[name])
        if not xs:
            continue
        custom_arr = np.asarray(custom, dtype=np.float64)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                text=names,
                textposition="top center",
                marker={
                    "size": 13 if used else 9,
                    "color": colors if used else "white",
                    "line": {"color": "#333" if used else "#999", "width": 1.5},
                },
                textfont={"color": "#222" if used else "#999"},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": np.nan_to_num(custom_arr[:, 5]),
                    "arrayminus": np.nan_to_num(custom_arr[:, 4]),
                    "color": "#666" if used else "#ccc",
                    "thickness": 1,
                },
                customdata=custom_arr[:, :4],
                hovertext=what,
                name="levels used in this run" if used else "other levels of the profile",
                hovertemplate=(
                    "level %{text} (%{hovertext})<br>bits/element %{x:.3f} (p5 %{customdata[0]:.3f}, "
                    "p95 %{customdata[1]:.3f})<br>quality %{y:.4f}"
                    "<br>chunks in this run %{customdata[2]:,} (%{customdata[3]:.1%})<extra></extra>"
                ),
            )
        )
    model = run.profile.get("model", {})
    device = run.profile.get("device", {})
    model_id = model.get("id", "?") if isinstance(model, dict) else model
    device_name = device.get("name", "?") if isinstance(device, dict) else device
    text_chunks = int(chunk_counts.get(TEXT_LEVEL, 0))
    note = (
        f"profile: model {model_id}, device {device_name}; bars: p5–p95 over chunks; "
        f"TEXT (recompute, quality 1.0): {text_chunks:,} chunks ({text_chunks / total:.1%})"
    )
    if levels.not_in_profile:
        note += f"<br>levels used but absent from profile.json: {', '.join(levels.not_in_profile)}"
    fig.update_layout(
        title={"text": "Codec profile: bits per KV element against quality"},
        xaxis={"title": {"text": "bits per KV element (all bytes counted)"}},
        yaxis={"title": {"text": "quality (uncompressed = 1)"}},
        height=450,
    )
    subtitle(fig, note)
    return fig
