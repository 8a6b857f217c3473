"""`costing: real_codec`: real bytes from the codec on a real model's KV, measured decode times."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sim_support import scenario_doc, tiny_profile_doc, write_profile

from kvcast.codec.codec import default_ladder, encode_chunk
from kvcast.codec.sources import capture
from kvcast.errors import InputError
from kvcast.sim.runner import run_scenario
from kvcast.sim.scenario import scenario_from_dict


@pytest.mark.slow
def test_real_codec_costs(
    tmp_path: Path, stories260k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVCAST_CACHE", str(tmp_path / "cache"))
    lad = default_ladder()
    names = [*lad.names(), "fp16", "int8"]
    q = {n: 1.0 - 0.01 * i for i, n in enumerate(lad.names())} | {"fp16": 1.0, "int8": 0.999}
    doc = tiny_profile_doc(
        bits={n: 16.0 for n in names}, quality=q
    )  # bits unused in real_codec mode
    # stories260K: 5 layers x 2 x 4 KV heads x 8 dims = 320 elements per token (TEST profile data)
    doc["model"] = {
        "id": "stories260K",
        "n_layers": 5,
        "n_kv_heads": 4,
        "head_dim": 8,
        "kv_elements_per_token": 320,
    }
    prof = write_profile(tmp_path, doc)
    model = f"stories260k:{stories260k_dir}"
    sd = scenario_doc(
        prof,
        costing="real_codec",
        real_codec={"model": model, "context": "prose", "tokens": 200, "repeats": 1},
        workload={"requests": 2, "context_tokens": 200},
        controllers=["fixed:cachegen-q1", "cachegen", "oracle"],
        slo_s=1.0,
    )
    sc = scenario_from_dict(sd, source="rc.yaml", base_dir=tmp_path)
    res = run_scenario(sc)
    ch = res.chunks[res.chunks.controller == "fixed:cachegen-q1"]
    kv = capture(model, tokens=200, context="prose").kv
    expect = [
        len(encode_chunk(kv[:, :, a : a + 100].contiguous(), "cachegen-q1")) for a in (0, 100)
    ]
    assert ch[ch.request_id == 0]["bytes"].tolist() == expect  # the codec's real byte counts
    assert (ch.gpu_end_s - ch.gpu_start_s > 0).all()  # measured decode time
    assert list((tmp_path / "cache" / "real_codec").glob("*.json"))  # measurements cached
    # the workload must be the captured context
    bad = scenario_from_dict(
        {**sd, "workload": {"requests": 1, "context_tokens": 300}},
        source="rc.yaml",
        base_dir=tmp_path,
    )
    with pytest.raises(InputError, match="workload.context_tokens"):
        run_scenario(bad)


def test_query_weighted_levels_need_key_gains(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache without key gains (synthetic) cannot be costed at a qw level: a clear error."""
    import torch

    import kvcast.codec.sources as sources
    from kvcast.codec.kv import KVCache, KVMeta
    from kvcast.sim.real_codec import measure_chunks

    meta = KVMeta("synthetic:test", "synthetic", "float32", 2, 1, 4, [], True)
    cache = KVCache(kv=torch.zeros(2, 2, 8, 1, 4), meta=meta)
    monkeypatch.setattr(sources, "capture", lambda *a, **k: cache)
    with pytest.raises(InputError, match="qw-mid.*key gains"):
        measure_chunks("synthetic:test", "prose", 8, 4, ["cachegen-q1", "qw-mid"], "cpu", 1)


@pytest.mark.slow
def test_klt_levels_are_costed_with_a_calibration_model_profile(
    tmp_path: Path, stories260k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvcast.codec.calibration import Calibration, calibration_profile
    from kvcast.sim.real_codec import measure_chunks

    monkeypatch.setenv("KVCAST_CACHE", str(tmp_path / "cache"))
    model = f"stories260k:{stories260k_dir}"
    m = measure_chunks(model, "prose", 200, 100, ["klt-mid", "cachegen-q1"], "cpu", 1)
    klt = default_ladder().get("klt-mid")
    prof, path = calibration_profile(
        Calibration(model, tokens=200, chunk_tokens=100, kinds=("prose",)), [klt]
    )
    assert path.parent == tmp_path / "cache" / "model-profiles"  # fitted once, then reused
    kv = capture(model, tokens=200, context="prose").kv
    expect = [
        len(
            encode_chunk(
                kv[:, :, a : a + 100].contiguous(),
                "klt-mid",
                model_profile=prof,
                context_start=a == 0,
            )
        )  # fmt: skip
        for a in (0, 100)
    ]
    assert m["sizes"]["klt-mid"] == expect


def test_klt_levels_need_a_model_that_prefills() -> None:
    from kvcast.sim.real_codec import measure_chunks

    with pytest.raises(InputError, match="cannot prefill contexts"):
        measure_chunks("synthetic:test", "prose", 8, 4, ["klt-mid"], "cpu", 1)
