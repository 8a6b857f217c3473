"""`costing: real_codec`: real bytes from the codec on a real model's KV, measured decode times."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from sim_support import scenario_doc, tiny_profile_doc, write_profile

from kvcast.chunk_cost_file import read_table
from kvcast.cli import main
from kvcast.codec.codec import default_ladder, encode_chunk
from kvcast.errors import InputError
from kvcast.kv.sources import capture
from kvcast.profiling.chunk_costs import ChunkCostSpec, chunk_costs, measure_chunk_costs
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
    with pytest.raises(InputError, match="costing.*measured chunk costs"):
        run_scenario(sc)  # the simulator never measures: it reads a chunk-cost table
    (tmp_path / "rc.yaml").write_text(yaml.safe_dump(sd), encoding="utf-8")
    assert main(["run", str(tmp_path / "rc.yaml"), "--out", str(tmp_path / "run"), "--quiet",
                 "--no-report"]) == 0  # fmt: skip
    ch = pd.read_parquet(tmp_path / "run" / "chunks.parquet")
    ch = ch[ch.controller == "fixed:cachegen-q1"]
    kv = capture(model, tokens=200, context="prose").kv
    expect = [
        len(encode_chunk(kv[:, :, a : a + 100].contiguous(), "cachegen-q1")) for a in (0, 100)
    ]
    assert ch[ch.request_id == 0]["bytes"].tolist() == expect  # the codec's real byte counts
    cached = list((tmp_path / "cache" / "chunk_costs").glob("*.json"))  # measurements cached
    assert len(cached) == 1
    table = read_table(cached[0])
    gpu_s = (ch.gpu_end_s - ch.gpu_start_s)[ch.request_id == 0].tolist()
    assert gpu_s == pytest.approx(list(table.levels["cachegen-q1"].decode_s))  # one route
    again = chunk_costs(ChunkCostSpec(model, "prose", 200, 100, tuple(table.levels), "cpu", 1))
    assert again == table  # read back, not measured again
    res = run_scenario(sc, chunk_costs=table)
    assert res.summary["decode_source"].startswith("codec decode measured per chunk on cpu")
    # the workload must be the captured context
    bad = scenario_from_dict(
        {**sd, "workload": {"requests": 1, "context_tokens": 300}},
        source="rc.yaml",
        base_dir=tmp_path,
    )
    with pytest.raises(InputError, match="workload.context_tokens"):
        run_scenario(bad, chunk_costs=table)


def test_query_weighted_levels_need_key_gains(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache without key gains (synthetic) cannot be costed at a qw level: a clear error."""
    import torch

    import kvcast.kv.sources as sources
    from kvcast.kv.cache import KVCache, KVMeta

    meta = KVMeta("synthetic:test", "synthetic", "float32", 2, 1, 4, [], True)
    cache = KVCache(kv=torch.zeros(2, 2, 8, 1, 4), meta=meta)
    monkeypatch.setattr(sources, "capture", lambda *a, **k: cache)
    with pytest.raises(InputError, match="qw-mid.*key gains"):
        measure_chunk_costs(
            ChunkCostSpec("synthetic:test", "prose", 8, 4, ("cachegen-q1", "qw-mid"), "cpu", 1)
        )


@pytest.mark.slow
def test_klt_levels_are_costed_with_a_calibration_model_tables(
    tmp_path: Path, stories260k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvcast.profiling.calibration import Calibration, calibration_profile

    monkeypatch.setenv("KVCAST_CACHE", str(tmp_path / "cache"))
    model = f"stories260k:{stories260k_dir}"
    m = measure_chunk_costs(
        ChunkCostSpec(model, "prose", 200, 100, ("klt-mid", "cachegen-q1"), "cpu", 1)
    )
    klt = default_ladder().get("klt-mid")
    prof, path = calibration_profile(
        Calibration(model, tokens=200, chunk_tokens=100, kinds=("prose",)), [klt]
    )
    assert path.parent == tmp_path / "cache" / "model-tables"  # fitted once, then reused
    kv = capture(model, tokens=200, context="prose").kv
    expect = [
        len(
            encode_chunk(
                kv[:, :, a : a + 100].contiguous(),
                "klt-mid",
                model_tables=prof,
                context_start=a == 0,
            )
        )  # fmt: skip
        for a in (0, 100)
    ]
    assert list(m.levels["klt-mid"].bytes) == expect


def test_klt_levels_need_a_model_that_prefills() -> None:
    with pytest.raises(InputError, match="cannot prefill contexts"):
        measure_chunk_costs(ChunkCostSpec("synthetic:test", "prose", 8, 4, ("klt-mid",), "cpu", 1))


def test_a_cuda_device_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="real_codec.device 'cuda': torch sees no CUDA GPU"):
        measure_chunk_costs(ChunkCostSpec("smollm2", "prose", 8, 4, ("cachegen-q1",), "cuda", 1))
