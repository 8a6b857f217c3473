"""Scenario files: shipped ones load, bad ones fail naming file and field, sweeps, determinism,
the run folder, and the `kvcast run` / `kvcast compare` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sim_support import (
    overlapping_scenario_doc,
    scenario_doc,
    tiny_profile_doc,
    write_profile,
    write_scenario,
)

from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.run_schema import CHUNK_COLUMNS, REQUEST_COLUMNS, RUN_FILES, SUMMARY_FIELDS
from kvcast.sim.runner import run_scenario, write_run
from kvcast.sim.scenario import load_scenario, scenario_from_dict, shipped_scenarios


@pytest.fixture
def prof(tmp_path: Path) -> Path:
    return write_profile(tmp_path, tiny_profile_doc(samples=True))


def test_shipped_scenarios_validate(shared_dir: Path) -> None:
    names = shipped_scenarios()
    assert {"quickstart", "cachegen-paper", "lte-scaled", "shared-link"} <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert sc.cases()
    lte = load_scenario("lte-scaled")
    assert len(lte.link.traces) == 5 and len(lte.cases()) == 10  # a folder glob of traces x 2 SLOs
    paper = load_scenario("cachegen-paper")
    assert paper.link.kind == "per_chunk" and paper.slos == (0.5, 1.0)
    # the held-out check (docs/decisions.md): none of lte-scaled's traces, one at a time or shared
    held, shared = load_scenario("heldout"), load_scenario("heldout-shared")
    assert len(held.link.traces) == 21 and len(held.cases()) == 42
    assert not set(held.link.traces) & set(lte.link.traces)
    assert held.link.traces == shared.link.traces and held.workload != shared.workload


def test_missing_profile_is_clear(tmp_path: Path) -> None:
    doc = scenario_doc(Path("no-such-profile"))
    sc = scenario_from_dict(doc, source="x.yaml", base_dir=tmp_path)
    with pytest.raises(InputError, match=r"x.yaml: field 'profile'.*no-such-profile.*not found"):
        run_scenario(sc)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("slo_s"), "'slo_s'"),
        (lambda d: d.update(slo_s=-1), "'slo_s'"),
        (lambda d: d.update(slo_s=[]), "'slo_s'"),
        (lambda d: d.update(model="gpt-9"), "field 'model'.*gpt-9"),
        (lambda d: d.update(gpu="a40"), "'gpu'"),
        (lambda d: d.update(colour="red"), "unknown key.*colour"),
        (lambda d: d["workload"].update(requests=0), "'workload.requests'"),
        (lambda d: d["workload"]["arrival"].update(process="burst"), "'workload.arrival.process'"),
        (
            lambda d: d["workload"].update(context_tokens={"uniform": [5, 1]}),
            "'workload.context_tokens.uniform'",
        ),
        (lambda d: d["link"].update(kind="wifi"), "'link.kind'"),
        (lambda d: d.update(link={"trace": "no/such-trace.down"}), "'link.trace'.*not found"),
        (lambda d: d.update(link={"synthetic": {"kind": "constant"}}), "'link.synthetic'.*mbps"),
        (lambda d: d.update(controllers=["cachegen", "magic"]), r"'controllers\[1\]'.*magic"),
        (lambda d: d.update(controller_params={"bba": {"x": 1}}), "'controller_params.bba'"),
        (
            lambda d: d.update(controller_params={"mpc": {"hrizon": 3}}),
            "controller_params.mpc.*unknown parameter",
        ),
        (lambda d: d.update(seed="zero"), "'seed'"),
        (lambda d: d.update(costing="magic"), "'costing'"),
        (
            lambda d: d.update(receiver={"decode_melem_per_s": "fast"}),
            "'receiver.decode_melem_per_s'",
        ),
    ],
)
def test_invalid_scenarios_name_file_and_field(
    tmp_path: Path, prof: Path, mutate, field: str
) -> None:  # type: ignore[no-untyped-def]
    doc = scenario_doc(prof)
    mutate(doc)
    path = write_scenario(tmp_path, doc)
    with pytest.raises(InputError, match=field) as exc:
        load_scenario(path)
    assert str(path) in str(exc.value)


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nslo_s: [1, 2\nmodel: y\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.yaml:\d+: not valid YAML"):
        load_scenario(path)


def test_sweeps_expand(tmp_path: Path, prof: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for i in range(3):
        (traces / f"t{i}.csv").write_text("time_s,mbps\n0,100\n1,200\n", encoding="utf-8")
    (traces / "LICENSE").write_text("not a trace", encoding="utf-8")
    doc = scenario_doc(prof, seed=[1, 2], slo_s=[0.1, 0.2], link={"trace": "traces"})
    sc = load_scenario(write_scenario(tmp_path, doc))
    assert len(sc.cases()) == 3 * 2 * 2
    assert {Path(c.trace).name for c in sc.cases()} == {"t0.csv", "t1.csv", "t2.csv"}
    res = run_scenario(sc)
    assert set(res.requests["trace"]) == {"t0.csv", "t1.csv", "t2.csv"}
    assert set(res.requests["seed"]) == {1, 2}


def test_same_scenario_and_seed_same_results(tmp_path: Path, prof: Path) -> None:
    doc = scenario_doc(
        prof,
        seed=[3, 4],
        workload={
            "requests": 5,
            "arrival": {"process": "poisson", "rate_per_s": 50.0},
            "context_tokens": {"uniform": [100, 600]},
        },
        link={"kind": "per_chunk", "low_gbps": 0.1, "high_gbps": 10.0},
    )
    sc = load_scenario(write_scenario(tmp_path, doc))
    a, b = run_scenario(sc), run_scenario(sc)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.chunks, b.chunks)
    assert a.summary["controllers"] == b.summary["controllers"]
    # a different seed gives a different workload
    c = run_scenario(load_scenario(write_scenario(tmp_path, {**doc, "seed": [5, 6]}, "other.yaml")))
    assert not a.requests["ttft_s"].equals(c.requests["ttft_s"])


def test_run_folder_matches_the_contract(tmp_path: Path, prof: Path) -> None:
    sc = load_scenario(write_scenario(tmp_path, scenario_doc(prof, slo_s=[0.003, 0.01])))
    run_dir = write_run(run_scenario(sc), tmp_path / "run")
    assert {p.name for p in run_dir.iterdir()} == set(RUN_FILES)
    req = pd.read_parquet(run_dir / "requests.parquet")
    assert set(REQUEST_COLUMNS) | {"seed"} <= set(req.columns)
    ch = pd.read_parquet(run_dir / "chunks.parquet")
    assert list(ch.columns) == list(CHUNK_COLUMNS)
    assert set(ch.gpu_kind) <= {"decode", "prefill"}
    summary = json.loads((run_dir / "summary.json").read_text())
    for m in summary["controllers"].values():
        assert set(m) >= set(SUMMARY_FIELDS)
    assert summary["controllers"]["oracle"]["utility_vs_bound"] == 1.0
    assert summary["objective"]["late_quality_weight"] == 0.0
    assert len(summary["cases"]) == 2
    resolved = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    assert (
        resolved["workload"]["arrival"]["process"] == "fixed"
        and resolved["receiver"]["gpu_count"] == 1
    )
    # the resolved scenario runs again to the same results
    again = scenario_from_dict(resolved, source="resolved", base_dir=tmp_path)
    pd.testing.assert_frame_equal(run_scenario(again).requests, req)


def test_cli_run_and_compare(
    tmp_path: Path, prof: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_scenario(tmp_path, scenario_doc(prof))
    assert main(["run", str(path), "--out", str(tmp_path / "r1"), "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "TTFT p50" in out and "oracle (bound)" in out and "vs bound" in out
    assert (tmp_path / "r1" / "summary.json").is_file()
    other = write_scenario(
        tmp_path,
        {
            **scenario_doc(prof),
            "name": "slow",
            "link": {"kind": "per_chunk", "low_gbps": 0.2, "high_gbps": 0.2},
        },
        "b.yaml",
    )
    assert (
        main(
            [
                "compare",
                str(path),
                str(other),
                "--controllers",
                "cachegen,bba",
                "--seed",
                "7",
                "--out",
                str(tmp_path / "cmp"),
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test/cachegen" in out and "slow/bba" in out
    req = pd.read_parquet(tmp_path / "cmp" / "requests.parquet")
    assert set(req.controller) == {
        f"{s}/{c}" for s in ("test", "slow") for c in ("cachegen", "bba", "oracle")
    }
    assert set(req.seed) == {7}
    assert set(req.case) == {"test/case-0", "slow/case-0"}
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert {c["case"] for c in summary["cases"]} == {"test/case-0", "slow/case-0"}
    # errors reach the user as a message and exit code 2
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["quickstart", "seed-70b", "smollm2-cpu", "cachegen-adaptation", "cachegen-paper"]
)
def test_shipped_scenarios_run_without_downloads(tmp_path: Path, name: str) -> None:
    """Every shipped scenario that needs no trace download runs (synthetic or per-chunk links),
    here on a small test profile carrying the level names the scenarios use."""
    from dataclasses import replace

    names = ["klt-mid", "klt-coarse", "cachegen-q3", "cachegen-q2", "cachegen-q1"]
    bits = dict(zip(names, (2.2, 1.9, 3.5, 2.6, 2.1), strict=True))
    quality = dict(zip(names, (0.98, 0.975, 0.975, 0.93, 0.89), strict=True))
    doc = tiny_profile_doc(
        bits={**bits, "fp16": 16.0, "int8": 8.2},
        quality={**quality, "fp16": 1.0, "int8": 0.999},
    )
    path = write_profile(tmp_path, doc, "ladder.json")
    sc = load_scenario(name)
    sc = replace(
        sc,
        profile=str(path),
        seeds=sc.seeds[:1],
        workload=replace(sc.workload, requests=min(sc.workload.requests, 4)),
    )
    res = run_scenario(sc)
    assert set(res.requests.controller) == set(sc.controllers)
    assert len(res.requests) == len(sc.controllers) * len(sc.cases()) * sc.workload.requests


def test_preset_files(tmp_path: Path, prof: Path) -> None:
    model = "hf_id: me/tiny\nn_layers: 4\nhidden: 256\nn_heads: 4\nn_kv_heads: 2\nhead_dim: 64\nffn: 512\nvocab: 1000\nparams: 3000000\n"
    (tmp_path / "mymodel.yaml").write_text(model, encoding="utf-8")
    gpu = "peak_tflops: 10\nmemory_gbps: 100\nmemory_gib: 8\nsource: test\n"
    (tmp_path / "mygpu.yaml").write_text(gpu, encoding="utf-8")
    doc = scenario_doc(prof, model="mymodel.yaml", gpu="mygpu.yaml")
    # a GPU receiver never silently takes the CPU-measured decode speed of the profile
    with pytest.raises(
        InputError, match="decode_melem_per_s.*measured on 'cpu'.*GPU codec profile"
    ):
        run_scenario(load_scenario(write_scenario(tmp_path, doc)))
    doc["receiver"] = {"decode_melem_per_s": 5000.0}
    sc = load_scenario(write_scenario(tmp_path, doc))
    res = run_scenario(sc)
    assert "mymodel" in res.summary["receiver"] and len(res.requests) > 0
    assert "ASSUMED 5000 Melem/s" in res.summary["decode_source"]
    (tmp_path / "badgpu.yaml").write_text(
        gpu.replace("peak_tflops: 10", "peak_tflops: -1"), encoding="utf-8"
    )
    with pytest.raises(InputError, match="field 'gpu'.*badgpu.yaml.*peak_tflops"):
        load_scenario(write_scenario(tmp_path, {**doc, "gpu": "badgpu.yaml"}, "b.yaml"))


def test_bench_sim_smoke(tmp_path: Path, prof: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,mbps\n0,1000\n1,3000\n", encoding="utf-8")
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "sim",
        "--profile",
        str(prof),
        "--trace",
        str(trace),
        "--requests",
        "3",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    figures = json.loads(out.read_text())
    assert figures["chunk_decisions"] == 3 * 6 * 6  # 3 requests x 6 chunks x 6 controllers
    assert "decisions per second" in capsys.readouterr().out


def test_workers_give_the_same_tables(tmp_path: Path, prof: Path) -> None:
    """(case, controller) units on 2 processes: the same requests and chunks, in the same order."""
    doc = overlapping_scenario_doc(prof, slo_s=[0.003, 0.01])
    sc = load_scenario(write_scenario(tmp_path, doc))
    one, two = run_scenario(sc), run_scenario(sc, workers=2)
    pd.testing.assert_frame_equal(one.requests, two.requests)
    pd.testing.assert_frame_equal(one.chunks, two.chunks)
    pd.testing.assert_frame_equal(one.traces, two.traces)
    assert one.summary["controllers"] == two.summary["controllers"]


@pytest.mark.slow
def test_the_ray_executor_gives_the_same_tables(tmp_path: Path, prof: Path) -> None:
    """`--executor ray` on a local Ray with 2 workers: the tables of a run in one process."""
    pytest.importorskip("ray", reason="Ray is the optional extra kvcast[ray]")
    doc = overlapping_scenario_doc(
        prof, requests=3, controllers=["cachegen", "mpc", "stochastic", "oracle"]
    )
    sc = load_scenario(write_scenario(tmp_path, doc))
    one, on_ray = run_scenario(sc), run_scenario(sc, workers=2, executor="ray")
    pd.testing.assert_frame_equal(one.requests, on_ray.requests)
    pd.testing.assert_frame_equal(one.chunks, on_ray.chunks)
    pd.testing.assert_frame_equal(one.traces, on_ray.traces)


def test_a_failing_unit_is_named(tmp_path: Path, prof: Path) -> None:
    """On workers, an error says which case and controller it came from."""
    doc = scenario_doc(
        prof,
        link={"synthetic": {"kind": "steps", "mbps": [1], "durations_s": 0.001, "loop": False}},
        controllers=["cachegen", "oracle"],
    )
    sc = load_scenario(write_scenario(tmp_path, doc))
    with pytest.raises(InputError, match=r"case-0 \(.*\), controller cachegen: request\(s\)"):
        run_scenario(sc, workers=2)


def test_a_list_of_generated_traces_is_a_sweep(tmp_path: Path, prof: Path) -> None:
    link = {"synthetic": [{"kind": "constant", "mbps": 50}, {"kind": "constant", "mbps": 400}]}
    doc = scenario_doc(prof, link=link, slo_s=[0.01, 0.02], controllers=["fixed:mid"])
    sc = scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path)
    assert [c.trace for c in sc.cases()] == [
        "synthetic:constant(mbps=50)", "synthetic:constant(mbps=50)",
        "synthetic:constant(mbps=400)", "synthetic:constant(mbps=400)",
    ]  # fmt: skip
    again = scenario_from_dict(sc.to_dict(), source="again.yaml", base_dir=tmp_path)
    assert again.link == sc.link
    req = run_scenario(sc).requests
    req = req[req.controller == "fixed:mid"]
    slow, fast = (req[req.trace == f"synthetic:constant(mbps={m})"] for m in (50, 400))
    assert slow.ttft_s.mean() > 4 * fast.ttft_s.mean()  # 8x the bandwidth, same requests
    with pytest.raises(InputError, match=r"synthetic\[1\]"):
        bad = {"synthetic": [{"kind": "constant", "mbps": 50}, {"mbps": 3}]}
        scenario_from_dict(scenario_doc(prof, link=bad), source="t.yaml", base_dir=tmp_path)
    with pytest.raises(InputError, match="listed twice"):
        twice = {"synthetic": [{"kind": "constant", "mbps": 50}] * 2}
        scenario_from_dict(scenario_doc(prof, link=twice), source="t.yaml", base_dir=tmp_path)


def test_the_context_reduction_scenario_runs_on_its_shipped_profile(tmp_path: Path) -> None:
    """Every method of docs/reduction.md's comparison on the measured reduction profile."""
    from dataclasses import replace

    sc = load_scenario("context-reduction")
    sc = replace(sc, workload=replace(sc.workload, requests=2), slos=sc.slos[:1])
    res = run_scenario(sc)
    r = res.requests
    assert set(r.controller) == set(sc.controllers)
    bound = r[r.controller == "oracle"].set_index(["case", "request_id"])["utility"]
    for _, row in r[r.controller != "oracle"].iterrows():
        assert row.utility <= bound[(row.case, row.request_id)] + 1e-9
