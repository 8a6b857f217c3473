"""encode_chunk / decode_chunk / chunk_info: round trips, errors, model tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv

from kvcast.codec import entropy
from kvcast.codec.codec import EncodeStats, chunk_info, decode_chunk, encode_chunk
from kvcast.codec.container import CorruptChunk
from kvcast.codec.ladder import load_ladder
from kvcast.codec.model_tables import (
    ModelTablesMismatch,
    fit_model_tables,
    levels_needing_tables,
    load_model_tables,
)
from kvcast.codec.quantize import fp16_scale_up, max_level, quantize
from kvcast.codec.transforms import fit_klt
from kvcast.errors import InputError

LADDER = load_ladder()
KV = synthetic_kv()


def key_gains_for(kv: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic synthetic key gains float32 [L, H * D] (log-normal, mean 1 per layer)."""
    rng = np.random.default_rng(seed)
    g = np.exp(rng.normal(0, 0.8, size=(kv.shape[0], kv.shape[3] * kv.shape[4])))
    return (g / g.mean(1, keepdims=True)).astype(np.float32)


GAINS = key_gains_for(KV)


@pytest.fixture(scope="module")
def profile():
    train = [synthetic_kv(seed=s, n_tokens=60) for s in (1, 2)]
    bases = fit_klt(train, [None, None])
    levels = levels_needing_tables(LADDER, with_transforms=True)
    return fit_model_tables(train, levels, model_id="synthetic:test", transforms=bases)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("level", LADDER.all_names())
def test_round_trip_every_level(level, profile):
    gains = GAINS if getattr(LADDER.get(level), "key_gains", False) else None
    data = encode_chunk(KV, level, model_tables=profile, key_gains=gains)
    out = decode_chunk(data, model_tables=profile, dtype=torch.float32)
    assert out.shape == KV.shape and out.dtype == torch.float32
    err = _rel(out.numpy(), KV)
    assert err < 0.6, err
    again = encode_chunk(KV, level, model_tables=profile, key_gains=gains)
    assert again == data  # deterministic
    head = chunk_info(data)
    assert head.level == level and head.shape == KV.shape and head.total_bytes == len(data)


def test_levels_with_key_gains_need_them():
    """Every k_gain: query level refuses to encode without gains, naming the level; the
    others accept gains and ignore them (same bytes)."""
    qw = [n for n in LADDER.all_names() if getattr(LADDER.get(n), "key_gains", False)]
    assert qw, "the shipped ladder has k_gain: query variants"
    for name in qw:
        with pytest.raises(InputError, match=f"level '{name}'.*key_gains"):
            encode_chunk(KV, name)
    for name in ("cachegen-q2", "int8"):
        assert encode_chunk(KV, name, key_gains=GAINS) == encode_chunk(KV, name)


def test_cachegen_error_is_within_half_a_step():
    """Without deltas every element is off by at most half its token's step."""
    data = encode_chunk(KV, "cachegen-q2")
    out = decode_chunk(data, dtype=torch.float32).numpy()
    spec = LADDER.get("cachegen-q2")
    bins = spec.bins(KV.shape[0])
    x = KV.reshape(KV.shape[0], 2, KV.shape[2], -1)
    s = np.abs(x).max(-1)
    step = s / max_level(bins)[:, :, None]
    diff = np.abs(out.reshape(x.shape) - x).max(-1)
    assert (diff <= step * 0.5 * (1 + 2e-3) + 1e-6).all()


def test_finer_levels_have_lower_error_and_more_bytes():
    kv = synthetic_kv(n_layers=30, n_tokens=40)  # layer groups as in a real 30-layer model
    errs, sizes = [], []
    for name in LADDER.names():
        data = encode_chunk(kv, name)
        errs.append(_rel(decode_chunk(data, dtype=torch.float32).numpy(), kv))
        sizes.append(len(data))
    assert errs == sorted(errs)
    assert sizes == sorted(sizes, reverse=True)


def test_int8_is_cachegens_baseline():
    data = encode_chunk(KV, "int8")
    out = decode_chunk(data, dtype=torch.float32).numpy()
    x = KV.reshape(KV.shape[0], 2, KV.shape[2], -1)
    s = fp16_scale_up(np.abs(x).max(-1, keepdims=True)).astype(np.float32)  # stored scale
    expect = np.rint(x * 127 / s) * (s / 127)
    assert np.abs(out.reshape(x.shape) - expect).max() <= 1e-6 * np.abs(x).max()
    n = KV.size
    assert chunk_info(data).section_sizes()["payload"] == n


def test_fp16_and_zstd_are_lossless_to_fp16():
    ref = torch.from_numpy(KV).to(torch.float16)
    for name in ("fp16", "zstd"):
        out = decode_chunk(encode_chunk(KV, name), dtype=torch.float16)
        assert torch.equal(out, ref)


def test_kivi_sizes():
    n = KV.size
    for name, bits in (("kivi4", 4), ("kivi2", 2)):
        data = encode_chunk(KV, name)
        assert chunk_info(data).section_sizes()["payload"] == -(-n * bits // 8)
    e4 = _rel(decode_chunk(encode_chunk(KV, "kivi4"), dtype=torch.float32).numpy(), KV)
    e2 = _rel(decode_chunk(encode_chunk(KV, "kivi2"), dtype=torch.float32).numpy(), KV)
    assert e4 < e2 < 0.5


def test_symbols_round_trip_exactly():
    """The entropy coder returns exactly the symbols the quantizer produced."""
    from kvcast.codec.codec import stream_plan
    from kvcast.codec.entropy_tables import TableLayout, count_symbols, freqs_from_counts

    spec = LADDER.get("delta-k-q2")
    x = KV.reshape(KV.shape[0], 2, KV.shape[2], -1)
    layout = TableLayout(spec.bins(KV.shape[0]), x.shape[-1], spec.groups, spec.anchor_bins)
    sym, _ = quantize(x, layout.bins, groups=spec.groups, anchor_bins=spec.anchor_bins)
    sizes = layout.sizes()
    cum, start = entropy.build_tables(
        freqs_from_counts(count_symbols(sym, layout), sizes, 15), sizes
    )
    plan = stream_plan(layout, KV.shape[2], 16)
    flat = sym.reshape(-1)
    args = plan.kernel_args()
    buf, begin, nbytes, bad = entropy.encode_streams(flat, *args, cum, start, sizes, 15, 4)
    assert not bad.any()
    payload = np.concatenate([buf[b : b + n] for b, n in zip(begin, nbytes, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(nbytes)])
    out = np.zeros_like(flat)
    status = np.zeros(len(nbytes), dtype=np.int64)
    lut = entropy.build_lut(cum, start, sizes, 15)
    entropy.decode_streams(payload, offsets, *args, cum, start, sizes, 15, 4, lut, out, status)
    assert not status.any()
    assert np.array_equal(out, flat)


def test_coder_efficiency_on_laplace_symbols():
    rng = np.random.default_rng(3)
    n_tab, n_sym, n = 8, 31, 4000
    sym = np.clip(np.rint(rng.laplace(0, 3, size=(n, n_tab))) + 15, 0, 30).astype(np.uint8)
    counts = np.stack([np.bincount(sym[:, j], minlength=n_sym) for j in range(n_tab)])
    sizes = np.full(n_tab, n_sym, dtype=np.int64)
    cum, start = entropy.build_tables(entropy.quantize_counts(counts, 15).reshape(-1), sizes)
    one = np.zeros(1, dtype=np.int64)
    args = (one, np.array([sym.size]), n_tab, one, one, one, one)
    buf, begin, nbytes, _ = entropy.encode_streams(
        sym.reshape(-1), *args, cum, start, sizes, 15, 16
    )
    ideal = entropy.ideal_bits(sym.reshape(-1), *args, cum, start, 15)
    p = counts / counts.sum(1, keepdims=True)
    emp = -(counts * np.log2(np.where(p > 0, p, 1))).sum()
    assert ideal / (8 * nbytes[0]) > 0.98
    assert ideal <= emp * 1.005


def test_decode_dtypes_and_device():
    data = encode_chunk(KV, "cachegen-q2")
    ref = decode_chunk(data, dtype=torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        out = decode_chunk(data, dtype=dt, device="cpu")
        assert out.dtype == dt and torch.equal(out, ref.to(dt))


def test_torch_input_and_dtypes():
    t = torch.from_numpy(KV)
    assert encode_chunk(t, "cachegen-q2") == encode_chunk(KV, "cachegen-q2")
    assert chunk_info(encode_chunk(t.to(torch.bfloat16), "cachegen-q2")).dtype == "bfloat16"
    with pytest.raises(InputError, match="dtype"):
        encode_chunk(t.to(torch.int32), "cachegen-q2")
    with pytest.raises(InputError, match="shape"):
        encode_chunk(KV[0], "cachegen-q2")
    with pytest.raises(InputError, match="NaN"):
        bad = KV.copy()
        bad[0, 0, 0, 0, 0] = np.nan
        encode_chunk(bad, "int8")


def test_unknown_levels():
    with pytest.raises(InputError, match="unknown level 'nope'"):
        encode_chunk(KV, "nope")
    with pytest.raises(InputError, match="TEXT"):
        encode_chunk(KV, "TEXT")


def test_profile_levels_need_the_right_profile(profile, tmp_path):
    with pytest.raises(InputError, match="model tables"):
        encode_chunk(KV, "paper-q2")
    data = encode_chunk(KV, "paper-q2", model_tables=profile)
    assert chunk_info(data).profile_hex == profile.id_hex
    with pytest.raises(ModelTablesMismatch, match=profile.id_hex):
        decode_chunk(data)
    other = fit_model_tables(
        [synthetic_kv(seed=9)], levels_needing_tables(LADDER), model_id="other"
    )
    with pytest.raises(ModelTablesMismatch, match="was coded with model tables"):
        decode_chunk(data, model_tables=other)
    path = profile.save(tmp_path / "p.safetensors")
    again = load_model_tables(path)
    assert again.id == profile.id
    assert torch.equal(
        decode_chunk(data, model_tables=again), decode_chunk(data, model_tables=profile)
    )
    wrong_shape = synthetic_kv(n_heads=1)
    with pytest.raises(ModelTablesMismatch, match="kv_heads"):
        encode_chunk(wrong_shape, "paper-q2", model_tables=profile)


def test_stats_account_for_every_byte():
    st = EncodeStats()
    data = encode_chunk(KV, "cachegen-q2", stats=st)
    assert st.total_bytes == len(data) == st.payload_bytes + sum(st.side_bytes.values())
    assert st.n_streams == KV.shape[0] * 2 * -(-KV.shape[2] // 256)
    assert 0 < st.ideal_payload_bits <= 8 * st.payload_bytes


def test_corrupt_payload_is_detected():
    data = bytearray(encode_chunk(KV, "cachegen-q2"))
    data[-3] ^= 0x10
    with pytest.raises(CorruptChunk, match="CRC32"):
        decode_chunk(bytes(data))


@pytest.mark.parametrize("level", ["cachegen-q2", "delta-k-q2", "paper-q1"])
def test_cpu_and_torch_dequantize_are_bit_identical(level, profile):
    """The fused CPU kernel and the torch path (the one a GPU runs) give identical bits."""
    from kvcast.codec import container
    from kvcast.codec.codec import prepare_cachegen
    from kvcast.codec.quantize import dequantize

    spec = LADDER.get(level)
    x = KV.reshape(KV.shape[0], 2, KV.shape[2], -1)
    bins = spec.bins(KV.shape[0])
    sym, s16 = quantize(x, bins, groups=spec.groups, anchor_bins=spec.anchor_bins)
    a = dequantize(torch.from_numpy(sym), torch.from_numpy(s16), bins, groups=spec.groups,
                   anchor_bins=spec.anchor_bins)  # fmt: skip
    b = dequantize(torch.from_numpy(sym), torch.from_numpy(s16), bins, groups=spec.groups,
                   anchor_bins=spec.anchor_bins, torch_path=True)  # fmt: skip
    assert torch.equal(a, b)
    data = encode_chunk(KV, level, model_tables=profile)
    params = prepare_cachegen(container.parse(data), data, profile).params
    assert tuple(params.groups) == spec.groups


@pytest.mark.parametrize("level", ["fp16", "int8", "kivi4", "zstd"])
def test_baseline_with_a_stray_section_is_corrupt(level):
    """A baseline chunk carrying a section its codec never writes (e.g. key gains) is rejected."""
    from kvcast.codec import container

    data = encode_chunk(KV, level)
    head = container.parse(data)
    sections = [(s.kind, container.section_bytes(data, s)) for s in head.sections]
    bad = container.pack(codec=head.codec, dtype=head.dtype, flags=head.flags, shape=head.shape,
                         profile_id=None, level=head.level,
                         sections=[*sections, (container.SEC_GAINS, b"\x00\x3c" * 4)])  # fmt: skip
    with pytest.raises(CorruptChunk, match="sections it does not use: key gains"):
        decode_chunk(bad)
    assert torch.equal(decode_chunk(data), decode_chunk(data))  # the original still decodes
