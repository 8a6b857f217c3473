"""`costing: real_codec`: chunk costs from the real codec on a real model's KV cache.

The scenario's `real_codec.model` (a KV source name, e.g. `smollm2`) prefills `tokens` tokens of
a named context; the cache is cut into `chunk_tokens` chunks and every chunk is encoded with
`kvcast.codec.encode_chunk` at every level the codec profile lists (ladder levels and baselines):
the simulator then sends those exact byte counts. Each encoded chunk is decoded with
`decode_chunk` on `real_codec.device`, `repeats` times, and the median wall time is the receiver's
decode time for that chunk (CUDA is synchronised before the clock stops). Quality per level comes
from the codec profile (it needs the model run that `kvcast profile` does); TEXT prefill from the
profile's measured curve.

Every request is the captured context (the workload's context length must equal `tokens`);
measurements are cached under the user cache, keyed by everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from typing import Any

import numpy as np

from kvcast import __version__
from kvcast.codec.profile_format import CodecProfile
from kvcast.errors import InputError

from .costs import RequestCosts, split_tokens, text_costs
from .levels import expected_quality
from .receiver import Receiver


def _codec_fingerprint() -> str:
    """Hash of the codec's source files: a changed codec never reuses old measurements."""
    from pathlib import Path

    import kvcast.codec as codec_pkg

    root = Path(codec_pkg.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.glob("*.py")) + sorted(root.glob("*.yaml")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def measure_chunks(
    model: str,
    context: str,
    tokens: int,
    chunk_tokens: int,
    levels: list[str],
    device: str,
    repeats: int,
) -> dict[str, Any]:
    """Encode every chunk at every level; bytes and median decode seconds per (level, chunk)."""
    import torch

    from kvcast.codec.calibration import Calibration, calibration_profile
    from kvcast.codec.codec import decode_chunk, default_ladder, encode_chunk
    from kvcast.codec.sources import capture

    ladder = default_ladder()
    prof = None
    if ladder.needing_model_profile(levels):  # KLT levels: bases fitted on calibration contexts
        cal = Calibration(model, tokens=tokens, chunk_tokens=chunk_tokens, kinds=(context,))
        prof, _ = calibration_profile(cal, [ladder.get(n) for n in levels])
    cache = capture(model, tokens=tokens, context=context)
    if cache.key_gains is None:
        need = ladder.needing_key_gains(levels)
        if need:
            raise InputError(
                f"real_codec: the codec profile lists query-weighted levels ({', '.join(need)}) "
                f"whose encoding needs the model's key gains, and {cache.meta.label()} records "
                "none (synthetic caches have no queries): use a real model or a profile "
                "without those levels"
            )
    kv = cache.kv
    n = kv.shape[2]
    if n < tokens:
        raise InputError(f"real_codec: {model} gave {n} tokens, {tokens} asked for")
    bounds = np.cumsum((0, *split_tokens(tokens, chunk_tokens)))
    sizes: dict[str, list[int]] = {lv: [] for lv in levels}
    decode_s: dict[str, list[float]] = {lv: [] for lv in levels}
    cuda = device.startswith("cuda")
    from tqdm import tqdm

    bar = tqdm(
        total=(len(bounds) - 1) * len(levels), desc="real_codec: encode+decode", unit="chunk"
    )
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = kv[:, :, int(a) : int(b)].contiguous()
        for lv in levels:
            bar.update(1)
            data = encode_chunk(chunk, lv, key_gains=cache.key_gains, context_start=a == 0,
                                model_profile=prof)  # fmt: skip
            sizes[lv].append(len(data))
            decode_chunk(data, device=device, model_profile=prof)  # warm-up
            times = []
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                decode_chunk(data, device=device, model_profile=prof)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            decode_s[lv].append(statistics.median(times))
    bar.close()
    return {
        "model_id": cache.meta.model_id,
        "kv_elements_per_token": int(
            cache.meta.n_layers * 2 * cache.meta.n_kv_heads * cache.meta.head_dim
        ),
        "tokens": [int(b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        "sizes": sizes,
        "decode_s": decode_s,
        "device": device,
    }


class RealCodecCoster:
    def __init__(self, sc: Any, profile: CodecProfile, receiver: Receiver) -> None:
        spec = sc.real_codec
        ctx = sc.workload.context_tokens
        if ctx.kind != "fixed" or ctx.values[0] != spec.tokens:
            raise InputError(
                f"{sc.source}: field 'workload.context_tokens': with 'costing: real_codec' every request is "
                f"the captured context: expected {spec.tokens} (real_codec.tokens)"
            )
        self.profile = profile
        self.receiver = receiver
        self.levels = list(profile.level_names)
        key = json.dumps(
            [
                spec.model,
                spec.context,
                spec.tokens,
                sc.chunk_tokens,
                self.levels,
                spec.device,
                spec.repeats,
                __version__,
                _codec_fingerprint(),
            ]
        )
        self.cache_key = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.measured = self._load_or_measure(spec, sc.chunk_tokens)
        if self.measured["kv_elements_per_token"] != profile.model.kv_elements_per_token:
            raise InputError(
                f"{sc.source}: field 'real_codec.model': {spec.model} has "
                f"{self.measured['kv_elements_per_token']} KV elements per token but the codec profile "
                f"{profile.name!r} is for {profile.model.id} ({profile.model.kv_elements_per_token}); "
                "use the profile measured on that model"
            )

    def _load_or_measure(self, spec: Any, chunk_tokens: int) -> dict[str, Any]:
        from kvcast.paths import cache_dir

        path = cache_dir() / "real_codec" / f"{self.cache_key}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        m = measure_chunks(
            spec.model,
            spec.context,
            spec.tokens,
            chunk_tokens,
            self.levels,
            spec.device,
            spec.repeats,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m), encoding="utf-8")
        return m

    def request_costs(self, context_tokens: int, rng: np.random.Generator) -> RequestCosts:
        m = self.measured
        tokens = tuple(m["tokens"])
        sizes = {lv: tuple(int(x) for x in m["sizes"][lv]) for lv in self.levels}
        decode = {lv: tuple(float(x) for x in m["decode_s"][lv]) for lv in self.levels}
        text_sizes, text_s, step = text_costs(tokens, self.receiver)
        return RequestCosts(
            tokens, sizes, decode, expected_quality(self.profile), text_sizes, text_s, step
        )
