"""`kvcast kv capture|info` and `kvcast contexts list|show` through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvcast.cli import main
from kvcast.kv.sources.safetensors_io import load_kv


def test_capture_and_info_stories(
    stories260k_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.safetensors"
    rc = main(
        [
            "kv",
            "capture",
            "--model",
            f"stories260k:{stories260k_dir}",
            "--context",
            "longchat",
            "--tokens",
            "300",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "stories260K" in printed and f"wrote {out}" in printed
    cache = load_kv(out)
    assert cache.kv.shape == (5, 2, 300, 4, 8) and cache.meta.extra["context"] == "longchat"
    assert main(["kv", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "shape:        [5, 2, 300, 4, 8]" in info and "expected_answer:" in info
    assert "K neighbour-token correlation" in info


def test_capture_every_non_model_source(
    stories260k_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("Lily and Tom went to the park to play with a big red ball. " * 10)
    real = tmp_path / "real.safetensors"
    bin_path = stories260k_dir / "stories260K.bin"
    assert (
        main(
            [
                "kv",
                "capture",
                "--model",
                str(bin_path),
                "--text",
                str(text),
                "--tokens",
                "120",
                "-o",
                str(real),
            ]
        )
        == 0
    )
    part = tmp_path / "part.safetensors"
    assert (
        main(
            [
                "kv",
                "capture",
                "--model",
                str(real),
                "--tokens",
                "50",
                "--dtype",
                "float16",
                "-o",
                str(part),
            ]
        )
        == 0
    )
    sliced = load_kv(part)
    assert sliced.n_tokens == 50 and sliced.meta.dtype == "float16"
    assert sliced.meta.token_ids == load_kv(real).meta.token_ids[:50]
    syn = tmp_path / "syn.safetensors"
    assert (
        main(
            [
                "kv",
                "capture",
                "--model",
                "synthetic:Llama-3.1-8B",
                "--fit",
                str(real),
                "--tokens",
                "16",
                "-o",
                str(syn),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "synthetic:Llama-3.1-8B [SYNTHETIC]" in printed and "[32, 2, 16, 8, 128]" in printed
    assert main(["kv", "info", str(syn)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out


def test_errors_exit_2_naming_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    assert main(["kv", "info", str(bad)]) == 2
    assert "bad.safetensors: not a safetensors file" in capsys.readouterr().err
    assert (
        main(
            [
                "kv",
                "capture",
                "--model",
                "./nowhere/model.bin",
                "--context",
                "prose",
                "--tokens",
                "8",
                "-o",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert "'./nowhere/model.bin': no such file or folder" in capsys.readouterr().err
    assert main(["contexts", "show", "sonnets"]) == 2
    assert "context 'sonnets': unknown" in capsys.readouterr().err


def test_contexts_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["contexts", "list"]) == 0
    listed = capsys.readouterr().out
    assert "prose" in listed and "longchat" in listed and "SYNTHETIC" in listed
    assert main(["contexts", "show", "longchat", "--chars", "1500", "--seed", "2"]) == 0
    shown = capsys.readouterr().out
    assert "# expected answer:" in shown and "What is the first topic" in shown


def test_show_with_model_tokens(stories260k_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "contexts",
                "show",
                "prose",
                "--model",
                f"stories260k:{stories260k_dir}",
                "--tokens",
                "64",
            ]
        )
        == 0
    )
    assert "64 tokens of stories260k:" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_cache_with_non_finite_values_is_refused_by_every_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: float
) -> None:
    import torch
    from codec_data import synthetic_kv

    from kvcast.kv.cache import KVCache, KVMeta
    from kvcast.kv.sources.safetensors_io import save_kv

    kv = torch.from_numpy(synthetic_kv(n_layers=3, n_tokens=40, n_heads=2, head_dim=8))
    kv[2, 1, 7, 0, 5] = bad
    meta = KVMeta(model_id="synthetic:test", source="synthetic", dtype="float32", n_layers=3,
                  n_kv_heads=2, head_dim=8, token_ids=[], synthetic=True)  # fmt: skip
    path = save_kv(KVCache(kv, meta), tmp_path / "bad.safetensors")
    for argv in (
        ["kv", "info", str(path)],
        ["codec", "fit-tables", str(path), "--chunk-tokens", "20", "-o", str(tmp_path / "t")],
        ["codec", "encode", str(path), "--chunk-tokens", "20", "-o", str(tmp_path / "c")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "[layer, K/V, token, head, dim] = [2, 1, 7, 0, 5]" in err, argv
        assert "expected finite values" in err
