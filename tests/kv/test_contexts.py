"""Context texts: exact token counts, real prose, seeded LongChat-style retrieval chats."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvcast.errors import InputError
from kvcast.kv.contexts import CONTEXTS, LICENSE_DIR, CharTokenizer, get_context
from kvcast.kv.sources import load_model

CHARS = CharTokenizer()


@pytest.mark.parametrize("name", ["prose", "docstrings", "longchat"])
def test_exact_length_and_deterministic(name: str) -> None:
    a = get_context(name, 3000, CHARS, seed=1)
    b = get_context(name, 3000, CHARS, seed=1)
    c = get_context(name, 3000, CHARS, seed=2)
    assert len(a.token_ids) == 3000 and len(a.text) == 3000
    assert a == b and a.text != c.text
    assert a.meta_extra()["context"] == name


def test_prose_is_real_english() -> None:
    ctx = get_context("docstrings", 20_000, CHARS, seed=0)
    words = ctx.text.split()
    common = {"the", "of", "a", "to", "is", "and", "in", "be", "if"}
    assert sum(w.lower() in common for w in words) / len(words) > 0.1
    assert ">>>" not in ctx.text and "def " not in ctx.text
    assert not ctx.synthetic and ctx.source.startswith("python-stdlib:")


@pytest.mark.skipif(not LICENSE_DIR.is_dir(), reason="no /usr/share/common-licenses here")
def test_licenses_context() -> None:
    ctx = get_context("licenses", 5000, CHARS, seed=0)
    assert "copy" in ctx.text.lower() and ctx.source.startswith("license:")


def test_longchat_question_and_answer() -> None:
    ctx = get_context("longchat", 6000, CHARS, seed=4)
    assert ctx.synthetic and ctx.answer
    assert f"I would like to discuss the topic of {ctx.answer}." in ctx.text
    first_turn = ctx.text.split("USER: ")[1]
    assert first_turn.startswith(f"I would like to discuss the topic of {ctx.answer}.")
    assert int(ctx.extra["n_topics"]) > 3
    assert ctx.text.startswith(
        f"Below is a record of our previous conversation on {ctx.extra['n_topics']} "
    )
    assert "What is the first topic" in (ctx.question or "")
    assert ctx.answer_correct(f"The first topic is {ctx.answer.upper()}!")
    assert not ctx.answer_correct("The first topic is the weather.")
    assert ctx.meta_extra()["expected_answer"] == ctx.answer
    other = get_context("longchat", 6000, CHARS, seed=5)
    assert other.answer != ctx.answer or other.text != ctx.text


def test_bos_and_model_tokens(stories260k_dir: Path) -> None:
    model = load_model(f"stories260k:{stories260k_dir}")
    for name in ("prose", "longchat"):
        ctx = get_context(name, 400, model, seed=0)
        assert len(ctx.token_ids) == 400 and ctx.token_ids[0] == 1
        assert model.detokenize(ctx.token_ids) == ctx.text


def test_context_errors() -> None:
    with pytest.raises(InputError, match="context 'poems': unknown; expected one of prose"):
        get_context("poems", 10, CHARS)
    with pytest.raises(InputError, match="must be > 0"):
        get_context("prose", 0, CHARS)
    with pytest.raises(InputError, match="cannot hold the first topic's opening line"):
        get_context("longchat", 50, CHARS)
    with pytest.raises(InputError, match="more than the 80 topics"):
        get_context("longchat", 2_000_000, CHARS)
    assert set(CONTEXTS) >= {"prose", "longchat"}
