"""Key gains (levels with `k_gain: query`) in the GPU decoder: bit-identical to the CPU decoder.

The golden cases `stories260k-qw-mid` (SYNTHETIC seeded gains on real stories260K KV) and
`stories260k-qw-coarse` (gains recorded from stories260K's own queries) carry a key gains
section; the dequantization kernel multiplies K by float32(r) per channel, 1.0 elsewhere.
The full kernels (rANS + dequantization) on these cases run in tests/codec/test_gpu_kernel.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kvcast.codec import codec, container
from kvcast.codec.gpu import decode as gd
from kvcast.codec.quantize import dequantize
from kvcast.errors import InputError
from kvcast.profiling import gpu_bench as bench
from kvcast.profiling import gpu_check as check

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
QW = [c["name"] for c in MANIFEST["cases"] if "key_gains" in c]
PLAIN = [c["name"] for c in MANIFEST["cases"] if "key_gains" not in c]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _gains_section(data: bytes) -> np.ndarray | None:
    head = container.parse(data)
    sec = head.section(container.SEC_GAINS, required=False)
    if sec is None:
        return None
    raw = container.section_bytes(data, sec)
    return np.frombuffer(raw, dtype="<f2").reshape(head.n_layers, -1)


def test_golden_has_synthetic_and_recorded_key_gain_cases() -> None:
    by_name = {c["name"]: c for c in MANIFEST["cases"]}
    assert {"stories260k-qw-mid", "stories260k-qw-coarse"} <= set(QW)
    assert by_name["stories260k-qw-mid"]["key_gains"]["source"] == "synthetic"
    assert by_name["stories260k-qw-coarse"]["key_gains"]["source"] == "recorded"
    for case in check.load_golden(GOLDEN):
        flags = gd.prepare(case.data).params.flags
        assert bool(flags & codec.FLAG_KEY_GAINS) == (case.name in QW), case.name
        assert (_gains_section(case.data) is not None) == (case.name in QW), case.name


@pytest.mark.parametrize("name", QW + PLAIN[:2])
def test_kernel_multipliers_are_r_on_k_and_one_elsewhere(name: str) -> None:
    case = check.load_golden(GOLDEN, [name])[0]
    prep = gd.prepare(case.data)
    head = prep.head
    ch = head.n_kv_heads * head.head_dim
    rows = prep.gains.reshape(head.n_layers, 2, ch)
    assert prep.gains.dtype == np.float32 and prep.gains.shape == (head.n_layers * 2, ch)
    assert (rows[:, 1] == 1.0).all()
    r = _gains_section(case.data)
    if r is None:
        assert (rows[:, 0] == 1.0).all()
    else:
        assert np.array_equal(rows[:, 0], r.astype(np.float32))
        assert len(np.unique(r)) > 10  # many distinct multipliers, not a constant


def test_key_gain_rows_checks_its_shape() -> None:
    assert (gd.key_gain_rows(None, 3, 4) == 1.0).all()
    with pytest.raises(RuntimeError, match="key gains"):
        gd.key_gain_rows(np.ones((2, 4), np.float16), 3, 4)


@pytest.mark.parametrize("name", QW)
def test_golden_output_depends_on_the_gains_of_k_only(name: str) -> None:
    """The golden tensor is the symbols dequantized then K times r: without r K differs."""
    case = check.load_golden(GOLDEN, [name])[0]
    prep = gd.prepare(case.data)
    sym = torch.from_numpy(case.symbols.copy())
    c = codec.prepare_cachegen(prep.head, case.data, None)
    args = (sym, torch.from_numpy(c.scales.copy()), prep.params.bins)
    kw = {"groups": prep.params.groups, "anchor_bins": prep.params.anchor_bins}
    plain = dequantize(*args, **kw)
    gained = dequantize(*args, **kw, key_gains=torch.from_numpy(c.gains.copy()))
    want = torch.from_numpy(case.out_f32).reshape(gained.shape)
    if c.exact is not None:  # a context-start chunk: its sink tokens travel exact (FLAG_EXACT)
        n = c.exact.shape[2]
        assert torch.equal(want[:, :, :n], torch.from_numpy(c.exact.astype(np.float32)))
        plain, gained, want = plain[:, :, n:], gained[:, :, n:], want[:, :, n:]
    assert torch.equal(gained, want)
    assert torch.equal(plain[:, 1], want[:, 1]) and not torch.equal(plain[:, 0], want[:, 0])
    r = torch.from_numpy(c.gains.astype(np.float32))[:, None, :]
    assert torch.equal(plain[:, 0] * r, want[:, 0])  # one float32 multiply per K value


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (pip install triton)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: test_gpu_kernel runs on it")
def test_interpreted_dequant_kernel_applies_the_gains(tmp_path: Path) -> None:
    """The dequantization kernel under TRITON_INTERPRET=1 on the golden symbols: outputs equal
    the CPU decoder's in every dtype; for the qw cases the same kernel with the multipliers set
    to 1.0 must differ on K (and only on K), so ignoring the gains would fail here."""
    names = QW + [n for n in PLAIN if n.startswith("stories260k")][:2]
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kvcast.cli.gpu_check", "--golden", str(GOLDEN), "--device",
         "cpu", "--dequant-only", "--cases", ",".join(names), "--json", str(out)],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    res = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(res) == set(names)
    for name in names:
        assert res[name]["ok"], res[name]["failures"]
        assert res[name]["key_gains"] == (name in QW)


def test_bench_synthetic_gains_are_labelled_and_seeded() -> None:
    a = bench.synthetic_key_gains(3, 16, seed=1)
    assert a.dtype == np.float32 and a.shape == (3, 16)
    assert np.array_equal(a, bench.synthetic_key_gains(3, 16, seed=1))
    assert not np.array_equal(a, bench.synthetic_key_gains(3, 16, seed=2))
    spread = bench.BENCH_GAIN_SPREAD
    assert (a >= 1 / spread).all() and (a <= spread).all() and a.min() < 1 < a.max()
    assert "SYNTHETIC" in bench.gains_label()
    with pytest.raises(InputError, match="spread"):
        bench.synthetic_key_gains(1, 2, spread=0.5)
