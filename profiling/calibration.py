"""The model tables that levels needing one (KLT bases, offline tables) are measured with.

`kvcast profile` and the simulator's real-codec costing fit it on *calibration contexts*: real
contexts of the same kinds as the measured ones but with their own seeds (from 1000 up), so no
measured context ever shaped the bases or tables its quality is measured with. Fitting captures
the calibration contexts once (about 20 s each for SmolLM2 on this CPU); the result is kept in
the user cache (`kvcast.paths.cache_dir() / "model-tables"`), keyed by everything it depends on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kvcast.codec.identity import codec_identity
from kvcast.codec.ladder import BaselineSpec, LevelSpec
from kvcast.codec.model_tables import ModelTables, fit_model_tables, load_model_tables
from kvcast.codec.transforms import fit_klt
from kvcast.errors import InputError
from kvcast.kv.contexts import CONTEXTS_REVISION, get_context
from kvcast.kv.sources import load_model, resolve_model
from kvcast.paths import cache_dir
from kvcast.profiling.codec_bench import split_chunks

CALIBRATION_SEED = 1000  # measured contexts use seeds below this
KINDS = ("prose", "longchat")


@dataclass(frozen=True)
class Calibration:
    """Which contexts the model tables are fitted on."""

    model: str
    contexts: int = 4
    tokens: int = 4000
    chunk_tokens: int = 1500
    seed: int = CALIBRATION_SEED
    kinds: tuple[str, ...] = KINDS  # context names, taken in turn

    def plan(self) -> list[tuple[str, int]]:
        """(context name, seed) of every calibration context."""
        n = len(self.kinds)
        return [(self.kinds[i % n], self.seed + i // n) for i in range(self.contexts)]

    def check_disjoint(self, measured: list[tuple[str, int]]) -> None:
        """InputError if a measured context is also a calibration context."""
        both = sorted(set(self.plan()) & set(measured))
        if both:
            raise InputError(
                f"calibration contexts {both} are also measured: start the measured seeds "
                f"below {self.seed} (--seed)"
            )


def _cache_key(cal: Calibration, levels: list[LevelSpec]) -> str:
    """Hash of the calibration, the levels, the codec's identity and the contexts' revision (no
    model load: a cached profile is found without loading the model)."""
    h = hashlib.sha256(json.dumps(asdict(cal), sort_keys=True).encode())
    specs = sorted((asdict(lv) for lv in levels), key=lambda d: d["name"])
    h.update(json.dumps(specs, sort_keys=True).encode())
    h.update(f"{codec_identity()} contexts {CONTEXTS_REVISION}".encode())
    return h.hexdigest()[:16]


def calibration_profile(
    cal: Calibration,
    levels: list[LevelSpec | BaselineSpec],
    *,
    say: Callable[[str], None] = lambda m: None,
) -> tuple[ModelTables, Path]:
    """The model tables (KLT bases, and offline tables for those of `levels` with
    `tables: profile`) fitted on `cal`'s contexts, from the user cache or fitted now; returns it
    and its file."""
    if cal.contexts < 1:
        raise InputError(f"calibration needs at least 1 context, got {cal.contexts}")
    if not resolve_model(cal.model).runnable:
        raise InputError(
            f"model {cal.model!r} cannot prefill contexts, so no model tables (KLT bases) can be "
            "fitted for it: use a runnable model, or levels without `transform: klt` or "
            "`tables: profile`"
        )
    tabled = [lv for lv in levels if isinstance(lv, LevelSpec) and lv.tables == "profile"]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", cal.model)[-60:]
    path = cache_dir() / "model-tables" / f"{safe}-{_cache_key(cal, tabled)}.safetensors"
    if path.is_file():
        return load_model_tables(path), path
    model = load_model(cal.model)
    caches, gains, chunks = [], [], []
    for i, (name, seed) in enumerate(cal.plan()):
        say(f"calibration context {i + 1}/{cal.contexts}: {name} seed {seed}")
        ctx = get_context(name, cal.tokens, model, seed)
        cache = model.capture(ctx.token_ids, extra=ctx.meta_extra())
        kv = cache.kv.float().numpy()
        caches.append(kv)
        gains.append(cache.key_gains)
        chunks += split_chunks(kv, min(cal.chunk_tokens, kv.shape[2]))
    transforms = fit_klt(caches, gains)
    plan = ", ".join(f"{n} seed={s}" for n, s in cal.plan())
    prof = fit_model_tables(
        chunks, tabled, model_id=model.model_id, transforms=transforms,
        provenance={"fitted_on": f"{cal.model}: {plan}; {cal.tokens} tokens each"},
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    prof.save(tmp)
    tmp.replace(path)
    return prof, path
