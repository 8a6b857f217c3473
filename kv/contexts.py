"""Context texts of N tokens that every machine has offline: real prose and retrieval chats.

Named contexts (`CONTEXTS`):
- ``prose``: real English prose, documents of both kinds below, shuffled by the seed;
- ``docstrings``: paragraphs of the Python standard library's documentation strings, read with
  `ast` from the stdlib's source files (nothing is imported or executed);
- ``licenses``: the licence texts a Debian machine carries in /usr/share/common-licenses;
- ``longchat``: a SYNTHETIC LongChat-style retrieval conversation generated from the seed:
  several topics are discussed, then the question "What is the first topic we discussed?",
  whose expected answer is carried with the context (`Context.question`, `.answer`).

`get_context(name, n_tokens, tokenizer, seed)` returns exactly `n_tokens` token ids (starting
with the tokenizer's BOS where the model expects one) and the text they decode to. The
tokenizer is anything with ``tokenize(text) -> list[int]`` and ``detokenize(ids) -> str``
(every `kvcast.kv.sources.LoadedModel`), optionally ``bos_id``. The texts depend on the
Python version and the machine's licence files; the context records a hash of its text.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import re
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

from kvcast.errors import InputError

# Bump when a named context's text changes for the same (name, tokens, seed): calibrations fitted
# on the contexts are cached under it (kvcast.profiling.calibration).
CONTEXTS_REVISION = 1

LICENSE_DIR = Path("/usr/share/common-licenses")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...


@dataclass
class Context:
    """N tokens of context text, plus the question and expected answer for retrieval contexts."""

    name: str
    seed: int
    token_ids: list[int]
    text: str  # what token_ids decode to
    synthetic: bool  # True for generated conversations (the prose is real)
    source: str  # where the text came from, in words
    question: str | None = None  # text to append after the context (retrieval contexts)
    answer: str | None = None  # the expected answer (e.g. the first topic)
    extra: dict[str, str] = field(default_factory=dict)
    # leading tokens that instruct (BOS, a chat's preamble): context pruning keeps them whole
    instruction_tokens: int = 0

    def answer_correct(self, generated: str) -> bool:
        """Whether a model's generated answer names the expected answer (case, punctuation and
        spacing ignored)."""
        if self.answer is None:
            raise InputError(f"context {self.name!r} has no expected answer")
        return _norm(self.answer) in _norm(generated)

    def meta_extra(self) -> dict[str, str]:
        """Fields to record in a captured cache's `KVMeta.extra`."""
        out = {"context": self.name, "context_seed": str(self.seed), "text_source": self.source}
        out["text_sha256"] = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        if self.synthetic:
            out["context_synthetic"] = "SYNTHETIC conversation (generated from the seed)"
        if self.answer is not None:
            out["expected_answer"] = self.answer
        return {**out, **self.extra}


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", s.lower()).split())


# -- real prose -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[Path, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if not _SKIP_DIRS.intersection(rel[:-1]) and not rel[-1].startswith("test_"):
            files.append(path)
    return tuple(files)


def _is_prose(par: str) -> bool:
    words = par.split()
    if len(words) < 8 or par[-1] not in ".!?:)":
        return False
    letters = sum(c.isalpha() or c.isspace() for c in par)
    return letters / len(par) > 0.85 and ">>>" not in par and "::" not in par


def _paragraphs(raw: str) -> list[str]:
    """Prose paragraphs of a docstring or licence: code, tables and headings left out."""
    out = []
    for block in re.split(r"\n\s*\n", raw):
        lines = block.splitlines()
        if any(line.startswith(("    ", "\t", ">>>")) for line in lines[1:]) and len(lines) > 1:
            indented = sum(line.startswith(("    ", "\t")) for line in lines)
            if indented == len(lines):
                block = "\n".join(line.strip() for line in lines)  # uniformly indented: prose
            else:
                continue  # a code example or a table
        par = " ".join(block.split())
        if _is_prose(par):
            out.append(par)
    return out


def _docstring_docs() -> Iterator[tuple[str, Callable[[], list[str]]]]:
    for path in _stdlib_files():

        def load(path: Path = path) -> list[str]:
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                return []
            pars = []
            for node in ast.walk(tree):
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                ):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        pars.extend(_paragraphs(doc))
            return pars

        yield f"python-stdlib:{path.stem}", load


def _license_docs() -> Iterator[tuple[str, Callable[[], list[str]]]]:
    if not LICENSE_DIR.is_dir():
        return
    seen = set()
    for path in sorted(LICENSE_DIR.iterdir()):
        real = path.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        yield (
            f"license:{path.name}",
            lambda real=real: _paragraphs(real.read_text(encoding="utf-8", errors="replace")),
        )


def _prose_text(kinds: Sequence[str], seed: int, min_chars: int) -> tuple[str, list[str]]:
    docs = []
    if "docstrings" in kinds:
        docs.extend(_docstring_docs())
    if "licenses" in kinds:
        docs.extend(_license_docs())
    if not docs:
        where = f"{LICENSE_DIR} (missing here)" if kinds == ("licenses",) else "this machine"
        raise InputError(f"context {'+'.join(kinds)!r}: no source texts found on {where}")
    random.Random(seed).shuffle(docs)
    parts: list[str] = []
    names: list[str] = []
    size = 0
    for name, load in docs:
        pars = load()
        if not pars:
            continue
        names.append(name)
        parts.extend(pars)
        size += sum(len(p) + 2 for p in pars)
        if size >= min_chars:
            break
    return "\n\n".join(parts), names


# -- LongChat-style retrieval conversations (synthetic) -------------------------------------
def _longchat_data() -> dict:
    return json.loads(resources.files("kvcast.kv").joinpath("data/longchat.json").read_text())


def _longchat_blocks(seed: int) -> tuple[list[str], list[str], dict]:
    """One text block per topic, in conversation order, and the topics (all of them, shuffled)."""
    data = _longchat_data()
    rng = random.Random(seed)
    topics = list(data["topics"])
    rng.shuffle(topics)
    blocks = []
    for topic in topics:
        fill = {"topic": topic, "topic_cap": topic[0].upper() + topic[1:]}
        turns = [f"USER: {data['opener'].format(**fill)}"]
        reply = [rng.choice(data["assistant_openers"]).format(**fill)]
        reply += rng.sample(data["assistant_sentences"], rng.randint(1, 3))
        turns.append("ASSISTANT: " + " ".join(reply))
        for q in rng.sample(data["user_followups"], rng.randint(1, 3)):
            turns.append(f"USER: {q}")
            reply = rng.sample(data["assistant_sentences"], rng.randint(2, 4))
            if rng.random() < 0.5:
                reply.insert(
                    rng.randint(0, len(reply)), rng.choice(data["topic_sentences"]).format(**fill)
                )
            turns.append("ASSISTANT: " + " ".join(reply))
        blocks.append("\n".join(turns))
    return blocks, topics, data


def _longchat(n_tokens: int, tok: Tokenizer, seed: int) -> Context:
    blocks, topics, data = _longchat_blocks(seed)
    prefix = _bos(tok)
    # topics needed: add blocks until the conversation reaches n_tokens; the last one is cut
    n = 1
    while True:
        text = data["preamble"].format(n=n) + "\n\n" + "\n\n".join(blocks[:n])
        ids = prefix + tok.tokenize(text)
        if len(ids) >= n_tokens:
            break
        if n == len(blocks):
            raise InputError(
                f"context 'longchat': {n_tokens} tokens need more than the {len(blocks)} topics "
                "the generator has; ask for fewer tokens"
            )
        n += 1
    # the answer must survive the cut: the first topic's opening line has to fit
    head = data["preamble"].format(n=n) + "\n\n" + blocks[0].split("\n")[0]
    first_len = len(prefix + tok.tokenize(head))
    if first_len > n_tokens:
        raise InputError(
            f"context 'longchat': {n_tokens} tokens cannot hold the first topic's opening "
            f"line ({first_len} tokens); ask for more tokens"
        )
    ids = ids[:n_tokens]
    return Context(
        name="longchat",
        seed=seed,
        token_ids=ids,
        text=tok.detokenize(ids),
        synthetic=True,
        source="SYNTHETIC LongChat-style topic-retrieval conversation (kvcast generator)",
        question="\n\nUSER: " + data["question"] + "\n" + data["answer_prefix"],
        answer=topics[0],
        extra={"n_topics": str(n), "topics": " | ".join(topics[:n])},
        instruction_tokens=len(prefix + tok.tokenize(data["preamble"].format(n=n))),
    )


# -- registry ---------------------------------------------------------------------------------
CONTEXTS: dict[str, str] = {
    "prose": "real English prose: Python stdlib docstrings and the machine's licence texts, mixed",
    "docstrings": "real English prose: Python standard library documentation strings",
    "licenses": f"real English prose: licence texts in {LICENSE_DIR}",
    "longchat": "SYNTHETIC LongChat-style retrieval chat: topics, then 'what was the first topic?'",
}
_KINDS = {
    "prose": ("docstrings", "licenses"),
    "docstrings": ("docstrings",),
    "licenses": ("licenses",),
}


def _bos(tok: Tokenizer) -> list[int]:
    bos = getattr(tok, "bos_id", None)
    return [] if bos is None else [int(bos)]


class CharTokenizer:
    """One token per character: shows or measures contexts without loading a model."""

    bos_id = None

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


def check_name(name: str) -> None:
    if name not in CONTEXTS:
        raise InputError(f"context {name!r}: unknown; expected one of {', '.join(CONTEXTS)}")


def get_context(name: str, n_tokens: int, tokenizer: Tokenizer, seed: int = 0) -> Context:
    """Exactly `n_tokens` tokens of the named context, tokenized by `tokenizer`."""
    check_name(name)
    if n_tokens <= 0:
        raise InputError(f"context {name!r}: --tokens must be > 0, got {n_tokens}")
    if name == "longchat":
        return _longchat(n_tokens, tokenizer, seed)
    prefix = _bos(tokenizer)
    chars = 6 * n_tokens + 2000
    while True:
        text, names = _prose_text(_KINDS[name], seed, chars)
        ids = prefix + tokenizer.tokenize(text)
        if len(ids) >= n_tokens:
            break
        if len(text) < chars:  # every source already used
            raise InputError(
                f"context {name!r}: only {len(ids)} tokens of text on this machine, "
                f"{n_tokens} asked for"
            )
        chars *= 2
    ids = ids[:n_tokens]
    return Context(
        name=name,
        seed=seed,
        token_ids=ids,
        text=tokenizer.detokenize(ids),
        synthetic=False,
        source=", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else ""),
        extra={},
        instruction_tokens=len(prefix),
    )
