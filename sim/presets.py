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

from dataclasses import dataclass

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


def get_model(name: str, where: str = "model") -> ModelPreset:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise InputError(
            f"{where}: unknown model preset {name!r} (known: {', '.join(MODELS)}, or 'profile')"
        ) from None


def get_gpu(name: str, where: str = "gpu") -> GpuPreset:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise InputError(
            f"{where}: unknown GPU preset {name!r} (known: {', '.join(GPUS)}, or 'profile')"
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
