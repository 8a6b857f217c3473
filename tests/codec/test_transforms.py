"""KLT levels (`transform: klt`): the model tables' bases, the exact integer inverse the
decoders share, the chunk flag and its checks, and the gain on real KV."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv
from test_query_gains import _pack, _sections, _with_flags

from kvcast.codec import container
from kvcast.codec.codec import (
    FLAG_KEY_GAINS,
    FLAG_TRANSFORM,
    EncodeStats,
    chunk_info,
    decode_chunk,
    default_ladder,
    encode_chunk,
    prepare_cachegen,
)
from kvcast.codec.container import CorruptChunk
from kvcast.codec.ladder import DEFAULT_LADDER, load_ladder
from kvcast.codec.model_tables import (
    ModelTablesMismatch,
    fit_model_tables,
    load_model_tables,
)
from kvcast.codec.transforms import Transforms, dec_limit, fit_klt, inverse_transform
from kvcast.errors import InputError

KV = synthetic_kv(n_layers=3, n_tokens=64, n_heads=2, head_dim=8, seed=1)
L, C = KV.shape[0], KV.shape[3] * KV.shape[4]
GAINS = np.linspace(0.5, 2.0, L * C, dtype=np.float32).reshape(L, C)
KLT_LEVELS = ["klt-fine", "klt-mid", "klt-coarse"]


def _flat(kv: np.ndarray) -> np.ndarray:
    return kv.reshape(kv.shape[0], 2, kv.shape[2], -1)


@pytest.fixture(scope="module")
def profile():
    calib = [synthetic_kv(n_layers=3, n_tokens=200, n_heads=2, head_dim=8, seed=s) for s in (2, 3)]
    tr = fit_klt(calib, [GAINS, GAINS])
    levels = [default_ladder().get(n) for n in KLT_LEVELS]
    return fit_model_tables(calib, levels, model_id="synthetic", transforms=tr)


def test_fitted_bases_invert_each_other() -> None:
    tr = fit_klt([KV], [GAINS])
    assert tr.key_gains and tr.shape == (L, C)
    inverse = tr.dec.astype(np.float64) * tr.dec_scale[:, :, None, :]
    eye = np.broadcast_to(np.eye(C), (L, 2, C, C))
    np.testing.assert_allclose(tr.enc.astype(np.float64) @ inverse, eye, atol=1e-3)
    # V's basis is orthonormal; K's is orthonormal once the gains are divided out
    np.testing.assert_allclose(tr.enc[:, 1] @ tr.enc[:, 1].transpose(0, 2, 1), eye[:, 1], atol=1e-5)
    k_basis = tr.enc[:, 0] / GAINS[:, :, None]
    np.testing.assert_allclose(k_basis @ k_basis.transpose(0, 2, 1), eye[:, 0], atol=1e-5)
    # every column uses the full range that keeps the float32 inverse exact
    assert np.abs(tr.dec).max() == dec_limit(C) and tr.float32_exact
    # strongest axis first: the energy of the coordinates falls
    y = tr.encode(_flat(KV)[:, :, 1:])
    energy = (y.astype(np.float64) ** 2).sum(axis=2)
    assert (np.diff(energy, axis=-1) <= 1e-6 * energy.max()).all()
    # without gains for every cache, keys are rotated unweighted
    assert not fit_klt([KV, KV], [GAINS, None]).key_gains


@pytest.mark.parametrize("wide", [False, True])
def test_inverse_is_exact_integer_arithmetic(wide: bool) -> None:
    """The decoders' matmul (float32 where |acc| < 2**24, else float64) equals an int64 one:
    the same bits on any device, whatever the summation order."""
    tr = fit_klt([KV], [GAINS])
    if wide:  # a profile with full-range int16 entries takes the float64 path
        tr = dataclasses.replace(tr, dec=(tr.dec.astype(np.int32) * 3).astype(np.int16))
    assert tr.float32_exact != wide
    rng = np.random.default_rng(0)
    bins = np.array([[224, 20]] * L)
    maxv = bins // 2 - 1
    sym = rng.integers(0, 2 * maxv[:, :, None, None] + 1, size=(L, 2, 50, C)).astype(np.uint8)
    step = rng.uniform(0.01, 3, size=(L, 2, 50)).astype(np.float32)
    got = inverse_transform(torch.from_numpy(sym), torch.from_numpy(step), maxv, tr).numpy()
    acc = np.matmul(sym.astype(np.int64) - maxv[:, :, None, None], tr.dec.astype(np.int64))
    expect = (acc.astype(np.float32) * step[..., None]) * tr.dec_scale[:, :, None, :]
    assert np.array_equal(got, expect)


@pytest.mark.parametrize("level", KLT_LEVELS)
def test_round_trip_and_flags(profile, level: str) -> None:
    stats = EncodeStats()
    data = encode_chunk(KV, level, model_tables=profile, stats=stats, context_start=True)
    head = chunk_info(data)
    assert head.flags & FLAG_TRANSFORM and head.profile_id == profile.id
    assert "tables" not in stats.side_bytes  # offline tables, like the paper
    out = decode_chunk(data, model_tables=profile, dtype=torch.float32)
    err = float((out - torch.from_numpy(KV)).norm() / np.linalg.norm(KV))
    assert err < 0.1, err
    assert torch.equal(out[:, :, 0], torch.from_numpy(KV[:, :, 0]).half().float())  # sink
    assert data == encode_chunk(KV, level, model_tables=profile, context_start=True)


def test_chunk_tables_variant_still_names_the_profile(profile) -> None:
    spec = dataclasses.replace(default_ladder().get("klt-mid"), name="klt-chunk", tables="chunk")
    ladder = dataclasses.replace(default_ladder(), variants=(spec,))
    data = encode_chunk(KV, "klt-chunk", model_tables=profile, ladder=ladder)
    head = chunk_info(data)
    assert head.profile_id == profile.id and head.section(container.SEC_TABLES, required=False)
    same = encode_chunk(KV, "klt-mid", model_tables=profile)
    a = decode_chunk(data, model_tables=profile, dtype=torch.float32)
    b = decode_chunk(same, model_tables=profile, dtype=torch.float32)
    assert torch.equal(a, b)  # same symbols, other tables
    with pytest.raises(ModelTablesMismatch, match="pass model_tables"):
        decode_chunk(data)


def test_missing_or_wrong_profile_is_a_clear_error(profile) -> None:
    with pytest.raises(InputError, match="klt-mid.*model_tables=.*--transforms"):
        encode_chunk(KV, "klt-mid")
    bare = fit_model_tables([KV], [default_ladder().get("paper-q1")], model_id="synthetic")
    with pytest.raises(ModelTablesMismatch, match="no KLT bases|has none"):
        encode_chunk(KV, "klt-mid", model_tables=bare)
    data = encode_chunk(KV, "klt-mid", model_tables=profile)
    with pytest.raises(ModelTablesMismatch, match="pass model_tables"):
        decode_chunk(data)
    other = fit_model_tables(
        [KV], [default_ladder().get("klt-mid")], model_id="synthetic",
        transforms=fit_klt([KV], [None]),
    )  # fmt: skip
    with pytest.raises(ModelTablesMismatch, match="was coded with model tables"):
        decode_chunk(data, model_tables=other)
    with pytest.raises(ModelTablesMismatch, match="layers"):
        encode_chunk(synthetic_kv(n_layers=2), "klt-mid", model_tables=profile)


def test_profile_file_round_trip_and_tampering(profile, tmp_path: Path) -> None:
    path = profile.save(tmp_path / "mp.safetensors")
    back = load_model_tables(path)
    assert back.id == profile.id and back.transforms is not None
    assert np.array_equal(back.transforms.dec, profile.transforms.dec)
    data = encode_chunk(KV, "klt-mid", model_tables=profile)
    assert torch.equal(
        decode_chunk(data, model_tables=back), decode_chunk(data, model_tables=profile)
    )
    # a changed basis changes the id, so a stale chunk cannot decode with it
    tr = profile.transforms
    changed = dataclasses.replace(profile, transforms=dataclasses.replace(tr, dec=tr.dec.copy()))
    changed.transforms.dec[0, 0, 0, 0] += 1
    assert changed.id != profile.id
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(str(path))
    tensors["transform/dec"][0, 0, 0, 0] += 1
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    safetensors.numpy.save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="does not match its content"):
        load_model_tables(tmp_path / "bad.safetensors")


def test_transforms_check_rejects_bad_arrays() -> None:
    tr = fit_klt([KV], [GAINS])
    with pytest.raises(InputError, match="dec int16"):
        Transforms(tr.enc, tr.dec.astype(np.int32), tr.dec_scale, True).check()
    bad = tr.dec_scale.copy()
    bad[0, 0, 0] = 0
    with pytest.raises(InputError, match="dec_scale must be > 0"):
        Transforms(tr.enc, tr.dec, bad, True).check()
    nan = tr.enc.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        Transforms(nan, tr.dec, tr.dec_scale, True).check()
    with pytest.raises(InputError, match="no KV caches"):
        fit_klt([], [])


def test_corrupt_flags_are_rejected(profile) -> None:
    data = encode_chunk(KV, "klt-mid", model_tables=profile)
    secs = _sections(data)
    secs[container.SEC_PARAMS] = _with_flags(secs[container.SEC_PARAMS], set_=FLAG_KEY_GAINS)
    with pytest.raises(CorruptChunk, match="KLT transform cannot be combined"):
        chunk_info(_pack(data, secs))
    # a chunk claiming a transform must name model tables
    plain = encode_chunk(KV, "cachegen-q2")
    secs = _sections(plain)
    secs[container.SEC_PARAMS] = _with_flags(secs[container.SEC_PARAMS], set_=FLAG_TRANSFORM)
    claim = _pack(plain, secs)
    with pytest.raises(CorruptChunk, match="profile id is empty"):
        prepare_cachegen(container.parse(claim), claim, profile)


def test_ladder_field_is_checked(tmp_path: Path) -> None:
    text = DEFAULT_LADDER.read_text()
    for extra, match in (
        ("    transform: pca\n", "transform': expected"),
        ("    transform: klt\n    k_gain: query\n", "cannot be combined"),
        ("    transform: klt\n    delta: true\n", "cannot be combined"),
    ):
        bad = text.replace(
            "  - name: near-lossless\n", "  - name: near-lossless\n" + extra + "    tables: chunk\n"
        )
        p = tmp_path / "l.yaml"
        p.write_text(bad)
        with pytest.raises(InputError, match=match):
            load_ladder(p)
    lad = load_ladder()
    assert lad.needing_model_tables(["klt-mid", "qw-mid", "paper-q1"]) == ["klt-mid", "paper-q1"]


def test_gpu_decoder_inverse_matches_the_cpu(profile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU decoder's KLT branch (torch on the device) against the CPU decoder, on the CPU
    under the interpreter switch (the branch launches no Triton kernel)."""
    from kvcast.codec import codec
    from kvcast.codec.gpu import decode as gd

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    data = encode_chunk(KV, "klt-coarse", model_tables=profile, context_start=True)
    prep = gd.prepare(data, profile)
    assert prep.transforms is not None
    dev = gd.upload(prep, "cpu")
    c = codec.prepare_cachegen(container.parse(data), data, profile)
    sym, status = codec.entropy_decode_cpu(
        c.payload, c.offsets, c.plan, c.tables, c.params, c.n_symbols
    )
    assert not status.any()
    dev.symbols.copy_(torch.from_numpy(sym))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        got = gd.run_dequant(dev, dtype)
        assert torch.equal(got, decode_chunk(data, model_tables=profile, dtype=dtype))
