"""The simulator's pipeline, projected: what a plan's first token costs if the link behaves as assumed.

The engine (kvcast.sim.engine) sends a request's chunks back to back: chunk k leaves after the
per-chunk overhead once chunk k-1 has arrived, and arrives one link time later (the one-way delay
plus its bytes over the bottleneck). The receiver GPU works on a request's chunks in order: chunk k
starts when it has arrived and the GPU is done with what was queued before it, and takes its
decode (or, for TEXT, prefill) time. One decode step after the last chunk gives the first token.

`finish_times` runs exactly that recurrence for many plans and many assumed link behaviours at
once; every controller that projects a TTFT uses it, so all of them project the pipeline the
simulator runs. Given the true per-chunk link times of a request alone on the link, it returns the
simulator's first-token time exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import TEXT, Observation


def finish_times(
    now_s: float,
    gpu_free_s: float,
    link_s: np.ndarray,
    gpu_s: np.ndarray,
    overhead_s: float = 0.0,
    decode_step_s: float = 0.0,
) -> np.ndarray:
    """First-token times (absolute) for per-chunk link and GPU times `[..., m]` (any leading shape,
    broadcast together). `gpu_free_s`: when the GPU is done with the work queued before chunk 0."""
    link_s = np.asarray(link_s, dtype=np.float64)
    gpu_s = np.asarray(gpu_s, dtype=np.float64)
    shape = np.broadcast_shapes(link_s.shape[:-1], gpu_s.shape[:-1])
    t = np.full(shape, float(now_s))
    g = np.full(shape, float(gpu_free_s))
    for k in range(link_s.shape[-1]):
        t = t + overhead_s + link_s[..., k]
        g = np.maximum(t, g) + gpu_s[..., k]
    return g + decode_step_s


def option_costs(obs: Observation, options: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Bytes on the link and GPU seconds of every remaining chunk for each option: two arrays
    `[len(options), chunks_left]`."""
    nbytes = np.empty((len(options), obs.chunks_left))
    work = np.empty((len(options), obs.chunks_left))
    for j, opt in enumerate(options):
        if opt == TEXT:
            nbytes[j], work[j] = obs.text_sizes, obs.text_time_s
        else:
            nbytes[j], work[j] = obs.next_sizes[opt], obs.decode_time_s[opt]
    return nbytes, work


def gpu_free_s(obs: Observation) -> float:
    """When the receiver GPU will be free for this request's next chunk."""
    return obs.now_s + obs.gpu_queue_s


def token_weights(obs: Observation) -> np.ndarray:
    """Each remaining chunk's share of the whole request's tokens: a request's quality is
    `obs.quality_so_far + sum(token_weights * quality of each remaining chunk)`."""
    if obs.chunk_tokens and obs.request_tokens > 0:
        return np.asarray(obs.chunk_tokens, dtype=np.float64) / obs.request_tokens
    return np.full(obs.chunks_left, 1.0 / obs.n_chunks)
