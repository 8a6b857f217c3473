"""GPU decoding of kvcast chunks: Triton kernels, bit-identical to the CPU decoder.

What runs on the GPU (docs/gpu.md): the interleaved rANS decoder, one program per pair of
streams and one thread per rANS lane, so all streams *and* all lanes of a chunk decode in
parallel; then dequantization with the anchor/delta sums, straight into a tensor
``[L, 2, T, H, D]`` in the model's dtype. The same float32 operations as the CPU decoder, no
FMA contraction, round-to-nearest-even casts: outputs equal the CPU decoder's bit for bit.
The CPU still parses and checks the container (CRCs, section sizes, tables).

Public API::

    from kvcast.codec import gpu
    gpu.available() -> tuple[bool, str]          # usable here? else why not
    gpu.register() -> bool                       # load the rANS kernel into
                                                 # kvcast.codec.decode_chunk(device="cuda")
    gpu.decode_chunk(data, *, model_tables=None, device="cuda", dtype=torch.float16)
        -> torch.Tensor [L, 2, T, H, D] on the device (everything on the GPU)

Importing the package registers nothing: `kvcast.codec.codec.device_entropy_decoder("cuda")`
looks up this kernel itself on first use where a GPU and Triton are there (Triton is not
imported otherwise).

Timing (`kvcast.profiling.gpu_timing`, used by `kvcast profile --device cuda` and
`kvcast bench codec --device cuda`)::

    time_decode(chunks: Sequence[bytes], *, model_tables=None, device="cuda",
                dtype=torch.float16, warmup=3, repeats=10, flush_l2=True,
                tile_lanes=decode.TILE_LANES) -> DecodeTiming

times the decode of encoded chunks (all of one level) with CUDA events: `warmup` untimed
decodes (Triton compilation, allocator), then `repeats` timed ones, each of a freshly uploaded
copy of the next chunk (round robin) after the L2 cache was flushed, so no repeat finds its
input in a cache. `DecodeTiming` gives medians in milliseconds per chunk: `kernel_ms` (rANS +
dequantization: the receiver's decode time), `entropy_ms`, `dequant_ms`, `upload_ms` (host to
device copy of the chunk), `host_ms` (CPU parse and checks), `end_to_end_ms`; and
`symbols_per_s`, `output_gb_per_s`, `decode_melem_per_s` (the codec profile's field), plus
`device` (e.g. ``"cuda:NVIDIA H200"``) and the raw samples. It raises `RuntimeError` where
there is no GPU.

Benchmark and checks: ``python -m kvcast.cli.gpu_bench`` (the table of scripts/gpu_check.sh),
``python -m kvcast.cli.gpu_check`` (golden vectors, bit-identity). Without a GPU the kernels
run in Triton's interpreter: ``TRITON_INTERPRET=1`` and device ``"cpu"``.
"""

from __future__ import annotations

import importlib.util

import torch

from kvcast.codec.codec import device_entropy_decoder

__all__ = ["available", "decode_chunk", "register"]


def available() -> tuple[bool, str]:
    """(True, device name) when the GPU decoder can run here, else (False, the reason)."""
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (it comes with PyTorch's CUDA builds)"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA GPU"
    return True, torch.cuda.get_device_name()


def register(device_type: str = "cuda") -> bool:
    """Load the GPU kernel for `kvcast.codec.decode_chunk(device=...)` now (decode_chunk also does
    on first use). Returns False where `available()` says no."""
    return device_entropy_decoder(device_type) is not None


def decode_chunk(data: bytes, **kwargs) -> torch.Tensor:
    """`kvcast.codec.gpu.decode.decode_chunk`: the whole decode on the GPU."""
    from kvcast.codec.gpu.decode import decode_chunk as _decode  # deferred: imports Triton

    return _decode(data, **kwargs)
