"""Target models and GPUs the simulator can cost, with the sources of every figure.

Model shapes come from each model's published Hugging Face `config.json` (layers, hidden size,
attention heads, KV heads, head dim, MLP width, vocabulary). From the shape we derive what the
simulator needs: KV elements per token, matmul parameters, and a prefill-time model

    prefill FLOPs(T new tokens after P cached) = 2 * matmul_params * T
                                               + 4 * layers * heads * head_dim * (T*P + T*(T+1)/2)

(the second term is QK^T and attention-times-V for causal attention over the prefix), divided by
`peak_flops * gpu_count * prefill_efficiency`. One decode step (the first output token) is
memory-bound: all weights plus the whole KV cache read once, over
`memory_bandwidth * gpu_count * memory_efficiency`.

GPU peaks are NVIDIA datasheet figures, dense (no sparsity) FP16/BF16 tensor-core throughput and
HBM/GDDR bandwidth. The efficiencies are assumptions, documented in docs/scenarios.md and
overridable per scenario: 0.5 of peak for long prefill (typical model-FLOPs utilisation of
long-prompt prefill in serving engines; on this project's H200 a plain bf16 matmul was seen at
about 790 of 989 TFLOP/s, 0.8, an upper bound for a whole model), 0.7 of peak memory bandwidth.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from kvcast.errors import InputError


@dataclass(frozen=True)
class ModelPreset:
    """A transformer's shape; everything the simulator costs is derived from it."""

    name: str
    hf_id: str  # where the shape comes from (the model's config.json)
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int  # MLP intermediate size (SwiGLU: 3 matrices)
    vocab: int
    params: float  # total parameters, as published
    bytes_per_param: int = 2  # bf16/fp16 weights
    kv_bytes_per_element: int = 2  # fp16 KV cache

    @property
    def kv_elements_per_token(self) -> int:
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim

    @property
    def matmul_params(self) -> int:
        """Parameters each token multiplies through: attention projections and MLP, all layers."""
        q_o = 2 * self.hidden * self.n_heads * self.head_dim
        k_v = 2 * self.hidden * self.n_kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.ffn
        return self.n_layers * (q_o + k_v + mlp)

    def prefill_flops(self, new_tokens: int, prefix_tokens: int) -> float:
        """FLOPs to prefill `new_tokens` tokens after `prefix_tokens` already-cached tokens."""
        t, p = float(new_tokens), float(prefix_tokens)
        linear = 2.0 * self.matmul_params * t
        attention = 4.0 * self.n_layers * self.n_heads * self.head_dim * (t * p + t * (t + 1) / 2)
        return linear + attention


@dataclass(frozen=True)
class GpuPreset:
    name: str
    peak_tflops: float  # dense FP16/BF16 tensor-core peak
    memory_gbps: float  # GB/s (1e9 bytes)
    memory_gib: float
    source: str


MODELS: dict[str, ModelPreset] = {
    m.name: m
    for m in (
        ModelPreset(
            "mistral-7b",
            "mistralai/Mistral-7B-Instruct-v0.2",
            32,
            4096,
            32,
            8,
            128,
            14336,
            32000,
            7.24e9,
        ),
        ModelPreset(
            "llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 128, 11008, 32000, 6.74e9
        ),
        ModelPreset(
            "llama-2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 128, 13824, 32000, 13.02e9
        ),
        ModelPreset(
            "llama-3.1-8b", "meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8.03e9
        ),
        ModelPreset(
            "llama-3.1-70b",
            "meta-llama/Llama-3.1-70B",
            80,
            8192,
            64,
            8,
            128,
            28672,
            128256,
            70.55e9,
        ),
        # CacheGen evaluates a "Llama-34B"; CodeLlama-34B is the Llama-family 34B with a public config.
        ModelPreset(
            "codellama-34b",
            "codellama/CodeLlama-34b-hf",
            48,
            8192,
            64,
            8,
            128,
            22016,
            32000,
            33.74e9,
        ),
    )
}

GPUS: dict[str, GpuPreset] = {
    g.name: g
    for g in (
        GpuPreset(
            "a40",
            149.7,
            696.0,
            48.0,
            "NVIDIA A40 datasheet: 149.7 TFLOPS FP16 tensor (dense), 696 GB/s GDDR6",
        ),
        GpuPreset(
            "a100",
            312.0,
            2039.0,
            80.0,
            "NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOPS BF16 dense, 2,039 GB/s",
        ),
        GpuPreset(
            "h100",
            989.4,
            3350.0,
            80.0,
            "NVIDIA H100 datasheet (SXM5): 989 TFLOPS BF16 dense, 3.35 TB/s",
        ),
        GpuPreset(
            "h200",
            989.4,
            4800.0,
            141.0,
            "NVIDIA H200 datasheet (SXM): 989 TFLOPS BF16 dense, 4.8 TB/s",
        ),
    )
}

DEFAULT_PREFILL_EFFICIENCY = 0.5
DEFAULT_MEMORY_EFFICIENCY = 0.7


def _preset_file(path: Path, cls: type, where: str) -> Any:
    """A preset from a YAML/JSON file holding the dataclass's fields (a user's own model or GPU)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: {path}: not valid YAML/JSON: {exc}") from None
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING]
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {path}: expected a mapping of {', '.join(names)}")
    raw = {"name": path.stem, **raw}
    unknown = [k for k in raw if k not in names]
    missing = [k for k in required if k not in raw]
    if unknown or missing:
        raise InputError(
            f"{where}: {path}: unknown field(s) {unknown} / missing field(s) {missing} (fields: {', '.join(names)})"
        )
    for f in fields(cls):
        v = raw.get(f.name)
        if v is None and f.default is not MISSING:
            continue
        if f.name in ("name", "hf_id", "source"):
            if not isinstance(v, str):
                raise InputError(f"{where}: {path}: field {f.name!r}: expected a string, got {v!r}")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise InputError(f"{where}: {path}: field {f.name!r}: expected a number > 0, got {v!r}")
        elif f.type in ("int",) and not isinstance(v, int):
            raise InputError(f"{where}: {path}: field {f.name!r}: expected an integer, got {v!r}")
    return cls(**raw)


def get_model(name: str, where: str = "model") -> ModelPreset:
    """A shipped preset by name, or a YAML/JSON file with ModelPreset's fields."""
    if Path(name).suffix in (".yaml", ".yml", ".json"):
        if not Path(name).is_file():
            raise InputError(f"{where}: model preset file {name} not found")
        return _preset_file(Path(name), ModelPreset, where)
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise InputError(
            f"{where}: unknown model preset {name!r} (known: {', '.join(MODELS)}, a preset file, or 'profile')"
        ) from None


def get_gpu(name: str, where: str = "gpu") -> GpuPreset:
    """A shipped preset by name, or a YAML/JSON file with GpuPreset's fields."""
    if Path(name).suffix in (".yaml", ".yml", ".json"):
        if not Path(name).is_file():
            raise InputError(f"{where}: GPU preset file {name} not found")
        return _preset_file(Path(name), GpuPreset, where)
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise InputError(
            f"{where}: unknown GPU preset {name!r} (known: {', '.join(GPUS)}, a preset file, or 'profile')"
        ) from None


@dataclass(frozen=True)
class GpuTimeModel:
    """Prefill and decode-step times of a model on `gpu_count` GPUs of one kind."""

    model: ModelPreset
    gpu: GpuPreset
    gpu_count: int = 1
    prefill_efficiency: float = DEFAULT_PREFILL_EFFICIENCY
    memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY

    def prefill_s(self, new_tokens: int, prefix_tokens: int) -> float:
        flops = self.model.prefill_flops(new_tokens, prefix_tokens)
        return flops / (self.gpu.peak_tflops * 1e12 * self.gpu_count * self.prefill_efficiency)

    def decode_step_s(self, context_tokens: int) -> float:
        weights = self.model.params * self.model.bytes_per_param
        kv = context_tokens * self.model.kv_elements_per_token * self.model.kv_bytes_per_element
        return (weights + kv) / (
            self.gpu.memory_gbps * 1e9 * self.gpu_count * self.memory_efficiency
        )
