"""`kvcast bench codec` and `kvcast codec ...` on a small saved (synthetic-labelled) KV file."""

from __future__ import annotations

import json

import pytest
import torch
from codec_data import synthetic_kv

from kvcast.cli import main
from kvcast.kv.cache import KVCache, KVMeta
from kvcast.kv.sources.safetensors_io import save_kv


def _kv_file(tmp_path, seed: int, n_tokens: int = 60):
    x = torch.from_numpy(
        synthetic_kv(n_layers=3, n_tokens=n_tokens, n_heads=2, head_dim=8, seed=seed)
    )
    meta = KVMeta(model_id="synthetic:test", source="synthetic", dtype="float32", n_layers=3, n_kv_heads=2,
                  head_dim=8, token_ids=[], synthetic=True)  # fmt: skip
    return save_kv(KVCache(x, meta), tmp_path / f"kv{seed}.safetensors")


@pytest.mark.slow
def test_bench_codec_json(tmp_path, capsys):
    kv, fit = _kv_file(tmp_path, 1), _kv_file(tmp_path, 2)
    out = tmp_path / "bench.json"
    rc = main(["bench", "codec", "--kv", str(kv), "--fit-kv", str(fit), "--chunk-tokens", "20", "--repeats", "1",
               "--levels", "cachegen-q2,cachegen-q1,paper-q2,int8,fp16", "--lmcache-python", "/bin/false",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["levels"]}
    assert set(rows) == {"cachegen-q2", "cachegen-q1", "paper-q2", "int8", "fp16"}
    assert rows["int8"]["ratio_vs_int8"] == pytest.approx(1.0)
    q2 = rows["cachegen-q2"]
    b = q2["bits_per_element"]
    assert b["total"] == pytest.approx(b["payload"] + b["side"])
    assert 0.3 < q2["coder_efficiency"] <= 1.0  # tiny chunks: stream flushes dominate
    assert q2["rel_l2_error"]["k"] < q2["rel_l2_error"]["v"] + 1  # both present and finite
    assert res["kv"]["n_chunks"] == 3
    assert res["lmcache"]["status"] == "failed"  # /bin/false is not an LMCache environment
    assert "cachegen-q2" in capsys.readouterr().out


def test_bench_unknown_level_fails_fast(tmp_path):
    kv = _kv_file(tmp_path, 1)
    assert main(["bench", "codec", "--kv", str(kv), "--levels", "nope", "--no-lmcache"]) == 2


def test_codec_encode_info_decode(tmp_path, capsys):
    kv = _kv_file(tmp_path, 3, n_tokens=45)
    out = tmp_path / "chunks"
    assert (
        main(
            [
                "codec",
                "encode",
                str(kv),
                "--level",
                "cachegen-q2",
                "--chunk-tokens",
                "20",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(str(p) for p in out.glob("chunk_*.kvc"))
    assert len(files) == 3
    assert main(["codec", "info", files[0]]) == 0
    assert "level cachegen-q2" in capsys.readouterr().out
    dec = tmp_path / "dec.safetensors"
    assert main(["codec", "decode", *files, "-o", str(dec), "--dtype", "float32"]) == 0
    from kvcast.kv.sources.safetensors_io import load_kv

    back = load_kv(dec).kv
    orig = load_kv(kv).kv
    assert back.shape == orig.shape
    assert float((back - orig).norm() / orig.norm()) < 0.3


def test_codec_fit_profile(tmp_path):
    kv = _kv_file(tmp_path, 4)
    prof = tmp_path / "p.safetensors"
    assert main(["codec", "fit-tables", str(kv), "--chunk-tokens", "20", "-o", str(prof)]) == 0
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(kv), "--level", "paper-q2", "--chunk-tokens", "30",
                 "--model-tables", str(prof), "-o", str(out)]) == 0  # fmt: skip
    files = sorted(str(p) for p in out.glob("*.kvc"))
    assert (
        main(["codec", "decode", *files, "-o", str(tmp_path / "d.safetensors")]) == 2
    )  # needs the profile
    assert (
        main(
            [
                "codec",
                "decode",
                *files,
                "--model-tables",
                str(prof),
                "-o",
                str(tmp_path / "d.safetensors"),
            ]
        )
        == 0
    )


def test_codec_fit_profile_with_klt_bases(tmp_path, capsys):
    kv = _kv_file(tmp_path, 4)
    bare, klt = tmp_path / "bare.safetensors", tmp_path / "klt.safetensors"
    assert main(["codec", "fit-tables", str(kv), "--chunk-tokens", "20", "-o", str(bare)]) == 0
    assert main(["codec", "fit-tables", str(kv), "--chunk-tokens", "20", "--transforms",
                 "-o", str(klt)]) == 0  # fmt: skip
    assert "KLT bases" in capsys.readouterr().out
    out = tmp_path / "chunks"
    enc = ["codec", "encode", str(kv), "--level", "klt-mid", "--chunk-tokens", "30", "-o", str(out)]
    assert main(enc) == 2  # no model tables given
    assert "--model-tables FILE" in capsys.readouterr().err
    assert main([*enc, "--model-tables", str(bare)]) == 2  # one without KLT bases
    assert "has none" in capsys.readouterr().err
    assert main([*enc, "--model-tables", str(klt)]) == 0
    files = sorted(str(p) for p in out.glob("*.kvc"))
    dec = tmp_path / "d.safetensors"
    assert main(["codec", "decode", *files, "--model-tables", str(klt), "--dtype", "float32",
                 "-o", str(dec)]) == 0  # fmt: skip
    from kvcast.kv.sources.safetensors_io import load_kv

    back, orig = load_kv(dec).kv, load_kv(kv).kv
    assert float((back - orig).norm() / orig.norm()) < 0.1


def test_codec_cli_names_a_damaged_chunk_file(tmp_path, capsys):
    kv = _kv_file(tmp_path, 3, n_tokens=20)
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(kv), "--chunk-tokens", "20", "-o", str(out)]) == 0
    chunk = out / "chunk_0000.kvc"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["codec", "info", str(chunk)]) == 2
    assert main(["codec", "decode", str(chunk), "-o", str(tmp_path / "d.safetensors")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert all(line.startswith(f"kvcast: error: {chunk}: ") for line in errors), errors


def _kv_file_with_gains(tmp_path, seed: int, n_tokens: int = 40):
    import numpy as np

    path = _kv_file(tmp_path, seed, n_tokens)
    from kvcast.kv.sources.safetensors_io import load_kv

    cache = load_kv(path)
    g = np.random.default_rng(seed).uniform(0.2, 3.0, size=(3, 16)).astype(np.float32)
    return save_kv(KVCache(cache.kv, cache.meta, key_gains=g), tmp_path / f"kvg{seed}.safetensors")


def test_codec_encode_with_and_without_key_gains(tmp_path, capsys):
    plain, gained = _kv_file(tmp_path, 5, n_tokens=40), _kv_file_with_gains(tmp_path, 5)
    out = tmp_path / "chunks"
    capsys.readouterr()
    assert main(["codec", "encode", str(plain), "--level", "qw-mid", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(plain) in err and "qw-mid" in err and "no" in err and "key gains" in err
    assert not list(out.glob("*.kvc"))  # refused before writing anything
    assert main(["codec", "encode", str(gained), "--level", "qw-mid", "--chunk-tokens", "20",
                 "-o", str(out)]) == 0  # fmt: skip
    files = sorted(str(p) for p in out.glob("chunk_*.kvc"))
    assert len(files) == 2
    assert main(["codec", "info", files[0]]) == 0
    assert "key gains" in capsys.readouterr().out
    dec = tmp_path / "dec.safetensors"
    assert main(["codec", "decode", *files, "-o", str(dec), "--dtype", "float32"]) == 0
    from kvcast.kv.sources.safetensors_io import load_kv

    back, orig = load_kv(dec).kv, load_kv(gained).kv
    assert float((back - orig).norm() / orig.norm()) < 0.1
    assert main(["kv", "info", str(gained)]) == 0
    assert "key gains:    [3, 16]" in capsys.readouterr().out
    assert main(["kv", "info", str(plain)]) == 0
    assert "key gains:    none" in capsys.readouterr().out


def test_bench_codec_key_gain_levels(tmp_path, capsys):
    plain, gained = _kv_file(tmp_path, 6, n_tokens=40), _kv_file_with_gains(tmp_path, 6)
    args = ["bench", "codec", "--chunk-tokens", "20", "--repeats", "1", "--no-lmcache"]
    # named explicitly without gains: a clear error, nothing measured
    capsys.readouterr()
    assert main([*args, "--kv", str(plain), "--levels", "int8,qw-mid"]) == 2
    err = capsys.readouterr().err
    assert "--levels qw-mid" in err and f"{plain} carries no key gains" in err
    # with gains: measured, its parameters say so
    out = tmp_path / "b.json"
    assert main([*args, "--kv", str(gained), "--levels", "qw-mid,int8", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["levels"]}
    assert rows["qw-mid"]["params"]["k_gain"] == "query" and res["skipped_levels"] == []
    assert rows["qw-mid"]["bits_per_element"]["side_by_section"]["key gains"] > 0


def test_bench_codec_skips_key_gain_levels_it_cannot_run(tmp_path, capsys):
    """Default levels on a KV without gains: the qw levels are skipped, said and listed."""
    kv, fit = _kv_file(tmp_path, 7, n_tokens=40), _kv_file(tmp_path, 8, n_tokens=40)
    out = tmp_path / "b.json"
    assert main(["bench", "codec", "--kv", str(kv), "--fit-kv", str(fit), "--chunk-tokens", "20",
                 "--repeats", "1", "--no-lmcache", "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    from kvcast.codec.ladder import load_ladder

    ladder = load_ladder()
    qw = [v.name for v in ladder.variants if v.key_gains]
    assert [s["name"] for s in res["skipped_levels"]] == qw
    assert all("carries no key gains" in s["reason"] for s in res["skipped_levels"])
    assert {r["name"] for r in res["levels"]} == set(ladder.all_names()) - set(qw)
    cap = capsys.readouterr()
    assert f"skipping {', '.join(qw)}" in cap.err
    assert "qw-mid: skipped" in cap.out


def test_bench_capture_cache_keeps_key_gains(tmp_path, monkeypatch, stories260k_dir):
    """A real capture's gains are cached beside its .npy and come back with it; an entry
    from before key gains existed is captured again, with them."""
    import numpy as np

    from kvcast.errors import InputError
    from kvcast.profiling import codec_bench

    monkeypatch.setattr(codec_bench, "cache_dir", lambda: tmp_path)
    model = f"stories260k:{stories260k_dir}"
    kv, meta, gains = codec_bench.load_kv(model, "prose", 64, 0, None)
    assert kv.shape == (5, 2, 64, 4, 8) and meta["key_gains"] is True
    assert gains is not None and gains.shape == (5, 32)
    files = sorted(p.name for p in (tmp_path / "bench-codec").iterdir())
    assert len(files) == 3 and sum(f.endswith(".gains.npy") for f in files) == 1
    kv2, meta2, gains2 = codec_bench.load_kv(model, "prose", 64, 0, None)  # from the cache
    assert np.array_equal(kv2, kv) and np.array_equal(gains2, gains) and meta2 == meta
    gpath = next((tmp_path / "bench-codec").glob("*.gains.npy"))
    np.save(gpath, gains[:, :-1])
    with pytest.raises(InputError, match=f"{gpath}: key gains of shape"):
        codec_bench.load_kv(model, "prose", 64, 0, None)
    jpath = next((tmp_path / "bench-codec").glob("*.json"))
    old = json.loads(jpath.read_text())
    del old["key_gains"]  # written before key gains existed
    jpath.write_text(json.dumps(old))
    np.save(gpath, gains)
    _, meta3, gains3 = codec_bench.load_kv(model, "prose", 64, 0, None)
    assert meta3["key_gains"] is True and np.array_equal(gains3, gains)  # captured again
    assert json.loads(jpath.read_text())["key_gains"] is True
    old_meta = {**meta3, "key_gains": False}
    names, skipped = codec_bench.levels_for_gains(
        codec_bench.load_ladder(), ["int8", "qw-fine"], None, explicit=False, meta=old_meta
    )
    assert names == ["int8"] and skipped[0]["name"] == "qw-fine"
    assert "stories260K has no key gains" in skipped[0]["reason"]
