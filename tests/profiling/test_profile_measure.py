"""`kvcast profile` on stories260K: a small but complete measurement, its profile and its curve."""

from __future__ import annotations

import json
import re

import pytest

from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.profile_format import load_profile
from kvcast.profiling.profile_curve import curve_table, lmcache_point
from kvcast.profiling.profile_measure import MeasureConfig, RunInfo, build_profile, run_contexts

pytestmark = pytest.mark.slow

LEVELS = ("cachegen-q2", "extreme", "klt-mid", "fp16", "int8", "zstd")


@pytest.fixture(scope="module")
def measured(stories260k_dir):
    cfg = MeasureConfig(
        model=f"stories260k:{stories260k_dir}",
        contexts=2,
        tokens=200,
        chunk_tokens=80,
        levels=LEVELS,
        jobs=1,
        prefill_piece=50,
        n_greedy=8,
        n_answer=6,
        calibration_contexts=1,  # prose seed 1000 (a longchat chat needs > 200 tokens)
    )
    results = run_contexts(cfg)
    return cfg, results, build_profile(cfg, results, RunInfo(command="test"))


def test_contexts_and_chunks(measured):
    cfg, results, _ = measured
    assert [(r["context"], r["seed"]) for r in results] == [("prose", 0), ("longchat", 0)]
    for r in results:
        assert r["tokens"] == 200
        assert [c["tokens"] for c in r["levels"]["int8"]["chunks"]] == [80, 80, 40]
        assert [p[0] for p in r["prefill"]] == [50, 100, 150, 200]
        assert r["ref"]["greedy_agreement"] == 1.0
    assert results[1]["ref"]["ref_correct"] in (True, False)
    assert results[0]["ref"]["ref_correct"] is None


def test_profile_figures(measured, tmp_path):
    cfg, results, prof = measured
    assert set(prof.level_names) == set(LEVELS)
    assert prof.ladder[0] in ("cachegen-q2", "extreme", "klt-mid")
    for lv in prof.levels:
        bits = lv.bits_per_element
        assert len(bits.samples) == len(lv.quality.per_chunk) == 6  # 2 contexts x 3 chunks
        assert bits.p5 <= bits.p50 <= bits.p95
        assert lv.encode_melem_per_s > 0 and lv.decode_melem_per_s > 0
    fp16, int8, q2, ext = (prof.level(n) for n in ("fp16", "int8", "cachegen-q2", "extreme"))
    assert fp16.bits_per_element.mean == pytest.approx(16.0, abs=0.1)
    assert 8.0 < int8.bits_per_element.mean < 9.0  # scales + container on a tiny model
    assert ext.bits_per_element.mean < q2.bits_per_element.mean < int8.bits_per_element.mean
    assert fp16.quality.normalized > 0.99 and fp16.rel_l2_error.k < 1e-3
    assert ext.quality.normalized < fp16.quality.normalized
    assert ext.rel_l2_error.k > q2.rel_l2_error.k
    # zstd is lossless w.r.t. fp16: the same decoded cache, measured once
    assert prof.level("zstd").quality == fp16.quality
    assert results[0]["levels"]["zstd"]["quality"]["same_cache_as"] == "fp16"
    pts = prof.prefill
    assert [p.context_tokens for p in pts] == [50, 100, 150, 200]
    times = [p.context_tokens / p.tokens_per_s for p in pts]
    assert times == sorted(times)
    text = curve_table(prof)
    assert "cachegen-q2" in text and "x int8" in text


def test_klt_level_uses_a_model_tables_fitted_on_other_contexts(measured, stories260k_dir):
    cfg, results, prof = measured
    ids = {r["model_profile"] for r in results}
    assert len(ids) == 1 and None not in ids  # one model tables, fitted once
    mp = prof.extra["model_profile"]
    assert mp["id"] == sorted(ids)
    assert mp["calibration_contexts"] == ["prose seed=1000 tokens=200"]
    klt, q2 = prof.level("klt-mid"), prof.level("cachegen-q2")
    assert 0 < klt.rel_l2_error.k < q2.rel_l2_error.k  # finer bins in decorrelated coordinates
    overlap = MeasureConfig(model=cfg.model, contexts=1, tokens=60, chunk_tokens=60,
                            levels=("klt-mid",), jobs=1, seed=1000)  # fmt: skip
    with pytest.raises(InputError, match="also measured"):
        run_contexts(overlap)


def test_deterministic_quality(measured):
    cfg, results, prof = measured
    again = run_contexts(MeasureConfig(**{**cfg.__dict__, "contexts": 1}))
    a, b = again[0]["levels"], results[0]["levels"]
    for level in LEVELS:
        assert a[level]["quality"]["nll"] == b[level]["quality"]["nll"]
        assert [c["bytes"] for c in a[level]["chunks"]] == [c["bytes"] for c in b[level]["chunks"]]


def test_cli_profile_and_curve(stories260k_dir, tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = main(["profile", "--model", f"stories260k:{stories260k_dir}", "--contexts", "1",
               "--tokens", "120", "--chunk-tokens", "60", "--levels", "int8,extreme",
               "--jobs", "1", "-o", str(out), "--raw", str(tmp_path / "p.raw.json")])  # fmt: skip
    assert rc == 0
    prof = load_profile(out)
    assert prof.provenance.command.startswith("kvcast profile --model stories260k:")
    assert prof.chunk_tokens == 60 and prof.level_names == ("extreme", "int8")
    assert json.loads((tmp_path / "p.raw.json").read_text())["results"][0]["tokens"] == 120
    html = tmp_path / "curve.html"
    assert main(["profile", "curve", str(out), "--html", str(html)]) == 0
    printed = capsys.readouterr().out
    assert "extreme" in printed and "int8" in printed
    page = html.read_text()
    assert "plotly" in page.lower() and "extreme" in page


def test_bad_input(stories260k_dir, tmp_path, capsys):
    model = f"stories260k:{stories260k_dir}"
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--model", model, "--contexts", "0"])
    assert exc.value.code == 2
    assert "argument --contexts: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["profile", "--model", model, "--levels", "nope", "--jobs", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["profile", "--model", model, "--device", "tpu"]) == 2
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"lmcache": {"status": "not installed"}}))
    with pytest.raises(InputError, match="field 'lmcache'"):
        lmcache_point(bad)


def test_cuda_needs_cuda(stories260k_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = MeasureConfig(model=f"stories260k:{stories260k_dir}", contexts=1, tokens=60,
                        chunk_tokens=60, levels=("int8",), jobs=1, device="cuda")  # fmt: skip
    with pytest.raises(InputError, match="CUDA is not available"):
        run_contexts(cfg)


def test_curve_with_peers(measured, tmp_path):
    import dataclasses

    from kvcast.profiling.profile_curve import curve_html, profile_peers

    _, _, prof = measured
    peer = {
        "description": "LMCache 0.5.6 CacheGenSerializer (cpu)",
        "bits_per_element": {"mean": 3.0, "p5": 2.9, "p50": 3.0, "p95": 3.1, "samples": [3.0]},
        "quality": {"normalized": 0.93, "perplexity_ratio": 1.06, "greedy_agreement": 0.92},
        "rel_l2_error": {"k": 0.19, "v": 0.15},
    }
    with_peer = dataclasses.replace(prof, extra={**prof.extra, "peers": {"lmcache-cachegen": peer}})
    (p,) = profile_peers(with_peer)
    assert p.quality == 0.93 and p.bits_per_element == 3.0
    table = curve_table(with_peer, [p])
    assert re.search(r"lmcache-cachegen +peer", table) and "0.9300" in table
    page = curve_html(with_peer, tmp_path / "c.html", [p]).read_text()
    assert "lmcache-cachegen" in page
    broken = dataclasses.replace(prof, extra={"peers": {"x": {"quality": {}}}})
    with pytest.raises(InputError, match="extra.peers.x"):
        profile_peers(broken)
