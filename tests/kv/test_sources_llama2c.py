"""llama2.c source: checkpoint and tokenizer readers, forward pass, greedy reference, capture."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import torch

from kvcast.errors import InputError
from kvcast.kv.sources import capture, load_model
from kvcast.kv.sources.llama2c import Llama2cModel, Llama2cTokenizer, read_checkpoint

# karpathy/llama2.c doc/stories260K.md; ids from ../shared/reference/MODELS-AND-PEERS.md §1.6
PROMPT_IDS = [1, 403, 407, 261, 378]  # BOS "Once upon a time"
REFERENCE_CONTINUATION = [432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338]


@pytest.fixture(scope="module")
def model(stories260k_dir: Path) -> Llama2cModel:
    return Llama2cModel(stories260k_dir / "stories260K.bin")


def test_header_matches_reference(stories260k_dir: Path) -> None:
    cfg, w = read_checkpoint(stories260k_dir / "stories260K.bin")
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (
        64,
        172,
        5,
        8,
        4,
    )
    assert (cfg.vocab_size, cfg.seq_len, cfg.head_dim, cfg.shared_classifier) == (512, 512, 8, True)
    assert sum(t.numel() for t in w.values()) == 264_128


def test_stored_rope_tables_match_the_adjacent_pair_formula(model: Llama2cModel) -> None:
    pos = torch.arange(512, dtype=torch.float64)[:, None]
    ang = pos * model._inv_freq[None, :]
    assert torch.allclose(model.w["freq_cis_real"].double(), ang.cos(), atol=1e-5)
    assert torch.allclose(model.w["freq_cis_imag"].double(), ang.sin(), atol=1e-5)


def test_tokenizer_reference_example(model: Llama2cModel) -> None:
    assert [1, *model.tokenize("Once upon a time")] == PROMPT_IDS
    assert model.detokenize(PROMPT_IDS) == "Once upon a time"


def _naive_bpe(tok: Llama2cTokenizer, text: str) -> list[int]:
    """run.c's encode loop, quadratic and literal: the reference for the heap version."""
    ids = [tok.space_id]
    for ch in text:
        b = ch.encode()
        ids.extend([tok.vocab[b]] if b in tok.vocab else [x + 3 for x in b])
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(ids) - 1):
            merged = tok.vocab.get(tok.pieces[ids[i]] + tok.pieces[ids[i + 1]])
            if merged is not None and tok.scores[merged] > best:
                best, best_i, best_id = tok.scores[merged], i, merged
        if best_i < 0:
            return ids
        ids[best_i : best_i + 2] = [best_id]


def test_heap_bpe_equals_run_c_loop(model: Llama2cModel) -> None:
    rng = random.Random(7)
    alphabet = "abcdefghij klmnop qrstuvwxyz,.!'\"\nLily Tom é€😀"
    texts = ["Once upon a time, there was a little girl named Lily."]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))) for _ in range(40)]
    for text in texts:
        assert model.tokenize(text) == _naive_bpe(model.tokenizer, text), text
        assert model.detokenize(model.tokenize(text)) == text


def test_greedy_continuation_matches_reference(model: Llama2cModel) -> None:
    out = model.greedy(PROMPT_IDS, len(REFERENCE_CONTINUATION))
    assert out == REFERENCE_CONTINUATION
    text = model.detokenize(PROMPT_IDS + out)
    assert text == "Once upon a time, there was a little girl named Lily. She"


def test_prefill_on_a_cache_equals_full_prefill(model: Llama2cModel) -> None:
    ids = PROMPT_IDS + REFERENCE_CONTINUATION
    logits, kv = model.prefill(ids)
    assert kv.shape == (5, 2, len(ids), 4, 8)
    logits2, kv2 = model.prefill(ids[7:], kv[:, :, :7])
    assert torch.allclose(logits[7:], logits2, atol=1e-4)
    assert torch.allclose(kv, kv2, atol=1e-5)
    # a half-precision cache (what a receiver decodes) still gives the same next token
    logits3, _ = model.prefill(ids[7:], kv[:, :, :7].half())
    assert torch.equal(logits3.argmax(-1), logits2.argmax(-1))


def test_capture_through_named_model_and_bin_path(stories260k_dir: Path) -> None:
    a = capture(f"stories260k:{stories260k_dir}", context="prose", tokens=200)
    b = capture(str(stories260k_dir / "stories260K.bin"), context="prose", tokens=200)
    assert a.kv.shape == (5, 2, 200, 4, 8) and a.meta.source == "llama2c"
    assert a.meta.model_id == "stories260K" and not a.meta.synthetic
    assert a.meta.token_ids[0] == 1 and len(a.meta.token_ids) == 200
    assert a.meta.extra["context"] == "prose"
    assert torch.equal(a.kv, b.kv)  # deterministic
    # load_model memoises: the quality work and capture share one loaded model
    assert load_model(f"stories260k:{stories260k_dir}") is load_model(
        f"stories260k:{stories260k_dir}"
    )


def test_capture_from_text_file(stories260k_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "story.txt"
    text.write_text("Once upon a time, there was a little dog. " * 20)
    cache = capture(f"stories260k:{stories260k_dir}", text=text, tokens=64, dtype="float16")
    assert cache.kv.dtype == torch.float16 and cache.meta.dtype == "float16"
    assert cache.n_tokens == 64 and cache.meta.extra["text_file"] == str(text)


def test_text_longer_than_context_names_the_file(stories260k_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text("The cat sat on the mat and looked at the big red ball. " * 100)
    with pytest.raises(InputError, match=r"long\.txt.*longer than stories260K's context of 512"):
        capture(f"stories260k:{stories260k_dir}", text=text)
    with pytest.raises(InputError, match=r"--tokens 600.*context of 512"):
        capture(f"stories260k:{stories260k_dir}", context="prose", tokens=600)
    short = tmp_path / "short.txt"
    short.write_text("Hi.")
    with pytest.raises(InputError, match=r"short\.txt: only \d+ tokens, 100 asked"):
        capture(f"stories260k:{stories260k_dir}", text=short, tokens=100)


def test_truncated_checkpoint_is_rejected_naming_it(stories260k_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.bin"
    bad.write_bytes((stories260k_dir / "stories260K.bin").read_bytes()[:500_000])
    with pytest.raises(InputError, match=r"cut\.bin: 500,000 bytes, but its header"):
        read_checkpoint(bad)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is a text file, not weights" * 10)
    with pytest.raises(InputError, match=r"junk\.bin: not a llama2.c checkpoint"):
        read_checkpoint(junk)


def test_wrong_tokenizer_is_rejected(stories260k_dir: Path, tmp_path: Path) -> None:
    tok = tmp_path / "tok.bin"
    tok.write_bytes(struct.pack("<i", 7) + b"\x00" * 10)
    with pytest.raises(InputError, match=r"tok\.bin: not a llama2.c tokenizer"):
        Llama2cModel(stories260k_dir / "stories260K.bin", tok)
    lonely = tmp_path / "model.bin"
    lonely.write_bytes((stories260k_dir / "stories260K.bin").read_bytes())
    with pytest.raises(InputError, match=r"model\.bin: no tokenizer beside it"):
        Llama2cModel(lonely)


def test_prefill_checks_its_inputs(model: Llama2cModel) -> None:
    with pytest.raises(InputError, match="outside the vocabulary"):
        model.prefill([1, 512])
    with pytest.raises(InputError, match="past_kv has shape"):
        model.prefill([1], torch.zeros(5, 2, 3, 4, 9))
    with pytest.raises(InputError, match="exceed the model's context of 512"):
        model.prefill([5] * 10, torch.zeros(5, 2, 505, 4, 8))
