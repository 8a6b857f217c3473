"""Bit-identity checks of the GPU decoder against the golden vectors and the CPU decoder.

The golden vectors (tests/golden/, written by tests/golden/make_golden.py) are chunks encoded
from real KV caches with the symbols and the float32 tensor the CPU decoder produced when they
were made. `check_golden` decodes each of them with the GPU kernels and compares symbols and
outputs (float32, float16, bfloat16) bit for bit; `check_corruption` damages streams and
compares the per-stream error codes of both decoders. Runs on a GPU (device "cuda") or, under
TRITON_INTERPRET=1, on the CPU (device "cpu").

    python -m kvcast.cli.gpu_check --golden tests/golden --device cuda [--json FILE]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kvcast.codec import codec, entropy
from kvcast.codec.gpu import decode as gd

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class GoldenCase:
    """One golden vector: the chunk bytes and what the CPU decoder made of them."""

    name: str
    data: bytes
    symbols: np.ndarray  # uint8 [L, 2, T, C]
    out_f32: np.ndarray | None  # float32 [L, 2, T, H, D] (small cases only)
    info: dict  # manifest entry; info["out_sha256"][dtype name]: SHA-256 of the output bytes


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (C order), for comparing outputs bit for bit."""
    return hashlib.sha256(
        t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()
    ).hexdigest()


def load_golden(folder: str | Path, names: list[str] | None = None) -> list[GoldenCase]:
    """The cases listed in folder/manifest.json (all, or those in `names`)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    cases = []
    for info in manifest["cases"]:
        if names and info["name"] not in names:
            continue
        arrays = np.load(folder / info["expected"])
        cases.append(
            GoldenCase(
                name=info["name"],
                data=(folder / info["chunk"]).read_bytes(),
                symbols=arrays["symbols"],
                out_f32=arrays.get("out_f32"),
                info=info,
            )
        )
    return cases


def cpu_symbols(
    prep: gd.Prepared, payload: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, status) of the CPU decoder (numba) for a prepared chunk, optionally damaged."""
    assert prep.plan is not None and prep.tables is not None and prep.offsets is not None
    return codec.entropy_decode_cpu(
        prep.payload if payload is None else payload, prep.offsets, prep.plan, prep.tables,
        prep.params, prep.n_symbols,
    )  # fmt: skip


def gpu_symbols(
    prep: gd.Prepared, device: str, *, tile_lanes: int = gd.TILE_LANES
) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, status) of the GPU kernel for a prepared chunk."""
    dev = gd.upload(prep, device, tile_lanes=tile_lanes)
    gd.run_entropy(dev)
    return dev.symbols.cpu().numpy(), dev.status.cpu().numpy().astype(np.int64)


def check_case(
    case: GoldenCase, device: str, tile_lanes: tuple[int, ...], *, hook: bool = False
) -> dict:
    """Decode one golden chunk on the device; compare symbols and every output dtype.

    The rANS kernel runs once per tile size; the dequantization kernel once per dtype on the
    first tile's symbols; `hook` also decodes through `kvcast.codec.decode_chunk` with the
    kernel registered as the codec's device entropy decoder.
    """
    prep = gd.prepare(case.data)
    res: dict = {"name": case.name, "ok": True, "failures": []}
    first = None
    for tile in tile_lanes:
        t0 = time.perf_counter()
        on = gd.upload(prep, device, tile_lanes=tile)
        gd.run_entropy(on)
        sym, status = on.symbols.cpu().numpy(), on.status.cpu().numpy()
        res[f"seconds_entropy_tile{tile}"] = round(time.perf_counter() - t0, 3)
        if status.any():
            res["failures"].append(f"tile {tile}: stream status {status.tolist()}")
        elif not np.array_equal(sym, case.symbols.reshape(-1)):
            n_bad = int((sym != case.symbols.reshape(-1)).sum())
            res["failures"].append(f"tile {tile}: {n_bad} symbols differ")
        first = first or on
    for name, dt in DTYPES.items():
        out = gd.run_dequant(first, dt).cpu()
        _compare(res, case, name, out)
    if hook:
        dev_type = torch.device(device).type
        codec.set_device_entropy_decoder(dev_type, gd.entropy_decode)
        try:
            out = codec.decode_chunk(case.data, device=device, dtype=torch.float16).cpu()
        finally:
            codec.set_device_entropy_decoder(dev_type, None)
        _compare(res, case, "float16", out, what="codec.decode_chunk with the hook: ")
    res["ok"] = not res["failures"]
    return res


def _compare(res: dict, case: GoldenCase, name: str, out: torch.Tensor, what: str = "") -> None:
    dt = DTYPES[name]
    if tuple(out.shape) != tuple(case.info["shape"]) or out.dtype != dt:
        res["failures"].append(f"{what}{name}: shape/dtype {tuple(out.shape)} {out.dtype}")
    elif tensor_sha256(out) != case.info["out_sha256"][name]:
        n_bad = "some"
        if case.out_f32 is not None:
            n_bad = int((out != torch.from_numpy(case.out_f32).to(dt)).sum())
        res["failures"].append(f"{what}{name}: {n_bad} outputs differ from the golden tensor")


def check_dequant(case: GoldenCase, device: str) -> dict:
    """The dequantization kernel alone on the golden symbols: every output dtype bit for bit.

    Fast under the interpreter (no rANS). For a chunk with key gains (FLAG_KEY_GAINS) it also
    runs the kernel with every multiplier set to 1.0 and requires that this output differs
    from the golden one on K and only on K: the case really exercises the gain multiply.
    """
    prep = gd.prepare(case.data)
    on = gd.upload(prep, device)
    on.symbols.copy_(torch.from_numpy(case.symbols.reshape(-1)).to(on.device))
    res: dict = {"name": case.name, "ok": True, "failures": []}
    for name, dt in DTYPES.items():
        _compare(res, case, name, gd.run_dequant(on, dt).cpu(), what="dequant kernel: ")
    res["key_gains"] = bool(prep.params.flags & codec.FLAG_KEY_GAINS)
    if res["key_gains"]:
        on.gains.fill_(1.0)
        plain = gd.run_dequant(on, torch.float32).cpu()
        want = codec.decode_chunk(case.data, device="cpu", dtype=torch.float32)
        if not torch.equal(plain[:, 1], want[:, 1]):
            res["failures"].append("without gains the V half changed: gains must touch K only")
        if torch.equal(plain[:, 0], want[:, 0]):
            res["failures"].append("without gains K is unchanged: the case does not test them")
    res["ok"] = not res["failures"]
    return res


def damaged_payloads(prep: gd.Prepared, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(what, payload, offsets) variants: a flipped byte, zeroed states, a cut stream."""
    assert prep.offsets is not None
    rng = np.random.default_rng(seed)
    off = prep.offsets
    out = []
    for k in range(3):  # flipped bytes in random streams' renormalization bytes
        p = prep.payload.copy()
        s = int(rng.integers(len(off) - 1))
        lo = int(off[s]) + 4 * prep.params.lanes
        if off[s + 1] > lo:
            j = int(rng.integers(lo, off[s + 1]))
            p[j] ^= 1 << int(rng.integers(8))
            out.append((f"flip stream {s} byte {j} ({k})", p, off))
    p = prep.payload.copy()
    p[int(off[0]) : int(off[0]) + 4] = 0
    out.append(("zeroed first state of stream 0", p, off))
    p = prep.payload.copy()
    p[int(off[-2]) + 1] ^= 0x10  # last stream, lane 0: another state, still in [L, 256 L)
    out.append(("other valid start state in the last stream", p, off))
    # flips the CPU decoder answers with "does not return to the start state" are rarer: look
    # for one (deterministic, bounded search with the fast CPU decoder)
    for _ in range(400):
        s = int(rng.integers(len(off) - 1))
        lo = int(off[s]) + 4 * prep.params.lanes
        if off[s + 1] - lo < 2:
            continue
        p = prep.payload.copy()
        j = int(rng.integers(max(lo, int(off[s + 1]) - 8), off[s + 1]))
        p[j] ^= 1 << int(rng.integers(8))
        if entropy.ERR_FINAL_STATE in cpu_symbols(prep, p)[1]:
            out.append((f"flip stream {s} byte {j} (final state)", p, off))
            break
    # stream 0 loses its last byte, which goes to stream 1 (same total length)
    off2 = off.copy()
    if len(off2) > 2:
        off2[1] -= 1
        out.append(("stream 0 one byte short", prep.payload.copy(), off2))
    return out


def check_corruption(case: GoldenCase, device: str, tile_lanes: int = gd.TILE_LANES) -> dict:
    """Per-stream error codes of both decoders agree on damaged streams."""
    prep = gd.prepare(case.data)
    res: dict = {"name": case.name, "ok": True, "failures": [], "statuses": []}
    for what, payload, offsets in damaged_payloads(prep):
        args = gd.stream_args(offsets, prep.plan, *prep.tables, prep.params.prob_bits,
                              prep.params.lanes)  # fmt: skip
        damaged = dataclasses.replace(prep, payload=payload, offsets=offsets, args=args)
        _, want = cpu_symbols(damaged, payload)
        _, got = gpu_symbols(damaged, device, tile_lanes=tile_lanes)
        res["statuses"].append({"what": what, "cpu": sorted(set(want.tolist()))})
        if not np.array_equal(want, got):
            res["failures"].append(f"{what}: CPU status {want.tolist()} != GPU {got.tolist()}")
    res["ok"] = not res["failures"]
    return res
