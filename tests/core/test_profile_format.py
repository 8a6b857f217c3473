"""The codec-profile file: round trips, name resolution, and errors that name file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_support import tiny_profile_doc, with_reductions, write_profile

from kvcast.errors import InputError
from kvcast.profile_format import (
    load_profile,
    profile_from_dict,
    profile_to_dict,
    save_profile,
)


def test_round_trip(tmp_path: Path) -> None:
    path = write_profile(tmp_path, tiny_profile_doc(samples=True))
    prof = load_profile(path)
    assert prof.ladder == ("hi", "mid", "lo")
    assert prof.level_names == ("hi", "mid", "lo", "fp16", "int8")
    assert prof.level("mid").bits_per_element.samples == (3.6, 4.0, 4.4)
    out = save_profile(prof, tmp_path / "again.json")
    assert load_profile(out) == load_profile(out)
    assert profile_to_dict(load_profile(out)) == profile_to_dict(prof)


def test_missing_shipped_profile_is_clear() -> None:
    with pytest.raises(InputError, match="no-such-profile.*not found"):
        load_profile("no-such-profile")


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_profile(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("levels"), "missing required key"),
        (lambda d: d.update(version=2), "'version'"),
        (lambda d: d["model"].update(kv_elements_per_token=7), "'model.kv_elements_per_token'"),
        (lambda d: d["levels"][1].update(kind="magic"), "'levels\\[1\\].kind'"),
        (
            lambda d: d["levels"][0]["bits_per_element"].update(mean=-1),
            "'levels\\[0\\].bits_per_element.mean'",
        ),
        (lambda d: d["levels"][0].update(colour="red"), "unknown key"),
        (lambda d: d["levels"].reverse(), "best quality first"),
        (lambda d: d["levels"][2].update(name="hi"), "duplicate level name"),
        (lambda d: d["prefill"]["points"].reverse(), "'prefill.points\\[1\\].context_tokens'"),
        (lambda d: d["prefill"]["points"][1].update(tokens_per_s=1e9), "'prefill.points\\[1\\]'"),
        (lambda d: d["levels"][0]["quality"].update(per_chunk=[1.0]), "per_chunk"),
    ],
)
def test_invalid_profile_names_file_and_field(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    doc = tiny_profile_doc(samples=True)
    mutate(doc)
    path = write_profile(tmp_path, doc)
    with pytest.raises(InputError, match=field) as exc:
        load_profile(path)
    assert str(path) in str(exc.value)


def test_bad_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n "format": \n}', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.json:3"):
        load_profile(path)


def test_from_dict_source_in_message() -> None:
    doc = tiny_profile_doc()
    doc["format"] = "other"
    with pytest.raises(InputError, match="mine.json: field 'format'"):
        profile_from_dict(json.loads(json.dumps(doc)), source="mine.json")


def _reduced() -> dict:
    return with_reductions(tiny_profile_doc())


def test_reduction_levels_round_trip(tmp_path: Path) -> None:
    doc = _reduced()
    path = tmp_path / "r.json"
    save_profile(profile_from_dict(doc), path)
    prof = load_profile(path)
    assert prof.level("lingua-50").payload == "text"
    assert prof.level("lingua-50").tokens_kept == 0.5
    assert prof.level("h2o-25+mid").payload == "kv"
    assert prof.level("h2o-25+mid").tokens_kept == 0.25
    assert prof.level("mid").tokens_kept == 1.0  # not a reduction: the whole chunk


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["levels"][-1].update(payload="kv"), r"levels\[\d+\].payload.*sends 'text'"),
        (lambda d: d["levels"][-2].update(payload="text"), r"levels\[\d+\].payload.*sends 'kv'"),
        (lambda d: d["levels"][-1].update(payload="mail"), r"levels\[\d+\].payload.*one of"),
        (lambda d: d["levels"][0].update(tokens_kept=0.5), r"levels\[0\].tokens_kept.*reduction"),
        (lambda d: d["levels"][-1].update(tokens_kept=1.5), r"levels\[\d+\].tokens_kept.*share"),
        (lambda d: d["levels"][-1].update(name="h2o-40"), r"levels\[\d+\].name.*25, 50 or 100"),
    ],
)
def test_bad_reduction_levels_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    doc = _reduced()
    mutate(doc)
    with pytest.raises(InputError, match=field):
        profile_from_dict(doc, source="p.json")
