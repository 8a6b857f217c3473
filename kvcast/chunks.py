"""What a chunk is, for every part of kvcast: `chunk_tokens` consecutive tokens of a context
(the last chunk holds the rest, so no token is dropped), sent either as KV at a codec level or as
its token ids, the level named `TEXT_LEVEL`, which the receiver prefills."""

from __future__ import annotations

from kvcast.errors import InputError

TEXT_LEVEL = "TEXT"  # the text fallback: send token ids, prefill them at the receiver
TEXT_BYTES_PER_TOKEN = 4  # token ids as int32 (TEXT, and pruned text)


def split_tokens(context_tokens: int, chunk_tokens: int) -> tuple[int, ...]:
    """Tokens per chunk: full chunks, then a shorter last one when the context does not divide."""
    return tuple(b - a for a, b in chunk_bounds(context_tokens, chunk_tokens))


def chunk_bounds(context_tokens: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the chunks of a `context_tokens`-token context."""
    if chunk_tokens < 1:
        raise InputError(f"chunk_tokens: expected an integer >= 1, got {chunk_tokens}")
    if context_tokens < 0:
        raise InputError(f"context tokens: expected an integer >= 0, got {context_tokens}")
    return [
        (s, min(s + chunk_tokens, context_tokens)) for s in range(0, context_tokens, chunk_tokens)
    ]
