"""Model-name resolution and the errors for bad model paths, formats and offline hub ids."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvcast.errors import InputError
from kvcast.kv.sources import capture, load_model, resolve_model


def test_names_resolve(stories260k_dir: Path, tmp_path: Path) -> None:
    assert resolve_model("smollm2").kind == "smollm2"
    assert resolve_model("SmolLM2").kind == "smollm2"
    spec = resolve_model(f"stories260k:{stories260k_dir}")
    assert spec.kind == "llama2c" and spec.tokenizer.endswith("tok512.bin")
    assert resolve_model(str(stories260k_dir)).kind == "llama2c"
    assert resolve_model(str(stories260k_dir / "stories260K.bin")).kind == "llama2c"
    assert resolve_model("synthetic:80x8x128") == resolve_model("synthetic:80x8x128")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "transformers"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "transformers"


@pytest.mark.parametrize(
    "name",
    ["./no/such/model.bin", "/nonexistent/folder", "missing.gguf", "a/b/c", "not a model!"],
)
def test_missing_paths_name_the_input(name: str) -> None:
    with pytest.raises(InputError, match="no such file or folder") as exc:
        resolve_model(name)
    assert repr(name) in str(exc.value)


def test_wrong_files_are_rejected(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt.*a file, but not one kvcast can run"):
        resolve_model(str(txt))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"a folder without config\.json"):
        resolve_model(str(empty))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF? no, just bytes" * 20)
    with pytest.raises(InputError, match=r"fake\.gguf: could not load as a GGUF causal LM"):
        load_model(str(fake))
    bad_cfg = tmp_path / "badmodel"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(InputError, match=r"badmodel.*could not load a transformers causal LM"):
        load_model(str(bad_cfg))
    with pytest.raises(InputError, match=r"--tokenizer .*nope\.bin: no such file"):
        resolve_model("smollm2", tmp_path / "nope.bin")
    kvfile = tmp_path / "x.safetensors"
    kvfile.write_text("not really")
    with pytest.raises(InputError, match=r"x\.safetensors: not a safetensors file"):
        capture(str(kvfile))


def test_offline_hub_id_fails_fast_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"model 'someorg/tiny-llm'.*hub is unreachable"):
        load_model("someorg/tiny-llm")
    assert time.perf_counter() - start < 30


def test_capture_needs_exactly_one_text_source(stories260k_dir: Path, tmp_path: Path) -> None:
    name = f"stories260k:{stories260k_dir}"
    with pytest.raises(InputError, match="exactly one of --text FILE or --context NAME"):
        capture(name, tokens=10)
    with pytest.raises(InputError, match="--context prose: --tokens N is required"):
        capture(name, context="prose")
    with pytest.raises(InputError, match="--fit applies to synthetic"):
        capture(name, context="prose", tokens=10, fit=tmp_path / "x")
    with pytest.raises(InputError, match=r"--text .*nothere\.txt: no such file"):
        capture(name, text=tmp_path / "nothere.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match=r"bin\.txt: not UTF-8 text"):
        capture(name, text=binary)
