"""The chunk-cost file (kvcast.chunk_cost_file): written atomically, read back equal, and every
bad field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvcast.chunk_cost_file import (
    ChunkCostTable,
    LevelChunkCosts,
    read_table,
    table_to_dict,
    write_table,
)
from kvcast.errors import InputError

TABLE = ChunkCostTable(
    model_id="m",
    kv_elements_per_token=320,
    device="cpu",
    tokens=(100, 50),
    levels={"cachegen-q1": LevelChunkCosts((1200, 700), (0.01, 0.006))},
    provenance={"model": "stories260k"},
)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write_table(TABLE, path)
    back = read_table(path)
    assert back == ChunkCostTable(**{**TABLE.__dict__, "source": str(path)})
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "field 'format': expected 'kvcast-chunk-costs'"),
        (lambda d: d.pop("tokens"), r"missing required key\(s\): tokens"),
        (lambda d: d.update(tokens=[100, 0]), r"field 'tokens\[1\]': expected an integer >= 1"),
        (lambda d: d["levels"]["cachegen-q1"].update(bytes=[1200]), "expected 2 chunks"),
        (
            lambda d: d["levels"]["cachegen-q1"].update(decode_s=[0.01, float("nan")]),
            r"field 'levels.cachegen-q1.decode_s\[1\]': expected a finite number",
        ),
        (lambda d: d.update(kv_elements_per_token=True), "expected an integer, got True"),
        (lambda d: d.update(extra=1), r"unknown key\(s\) extra"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(json.dumps(table_to_dict(TABLE)))
    change(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=message) as exc:
        read_table(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_not_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n "format": ', encoding="utf-8")
    with pytest.raises(InputError, match=r"c.json:2: not valid JSON"):
        read_table(path)
