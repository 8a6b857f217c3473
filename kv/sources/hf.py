"""Any Hugging Face transformers causal LM (a local folder or a hub id) as a `LoadedModel`.

The cache is read from (and fed back as) a `transformers.DynamicCache`, whose per-layer keys
and values are ``[batch=1, kv_heads, tokens, head_dim]``; kvcast's layout stacks them into
``[layers, 2, tokens, kv_heads, head_dim]``. Keys are post-RoPE, as transformers caches them.
Hub ids need the hub: where it is unreachable (as on an offline machine) loading fails with an
`InputError` that names the id.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from kvcast.errors import InputError
from kvcast.kv.sources.base import LoadedModel


class TransformersModel(LoadedModel):
    """A loaded transformers causal LM and its tokenizer, run on CPU (or `device`) in fp32."""

    source = "transformers"

    def __init__(self, model: Any, tokenizer: Any, model_id: str, *, source: str = "") -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.model_id = model_id
        if source:
            self.source = source
        cfg = model.config
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()
        n_heads = cfg.num_attention_heads
        self.n_heads = n_heads
        self.n_layers = cfg.num_hidden_layers
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        self.vocab_size = cfg.vocab_size
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.kv_dtype = next(model.parameters()).dtype
        # tokenize() adds no special tokens; a BOS the tokenizer would prepend is `bos_id`
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        special = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.bos_id: int | None = (
            special[0]
            if len(special) > len(plain) and special[1:] == plain[: len(special) - 1]
            else None
        )
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache`; accept either
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def tokenize(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _watch_queries(self):  # noqa: ANN202
        """Forward hooks on every layer's q_proj: queries before RoPE, whose per-pair energy
        equals the rotated queries' on average over positions (rotate_half pairs)."""
        found = {}
        for name, mod in self.model.named_modules():
            parts = name.split(".")  # e.g. model.layers.3.self_attn.q_proj
            if parts[-2:] == ["self_attn", "q_proj"] and len(parts) >= 3 and parts[-3].isdigit():
                found[int(parts[-3])] = mod
        if sorted(found) != list(range(self.n_layers)):
            return lambda: None  # an architecture without Llama-style q_proj: no key gains

        def hook(i: int):  # noqa: ANN202
            def record(_mod, _inp, out):  # noqa: ANN001, ANN202
                if self._queries is not None:
                    self._queries.add(i, out[0])

            return record

        handles = [found[i].register_forward_hook(hook(i)) for i in range(self.n_layers)]
        return lambda: [h.remove() for h in handles]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def _prefill(
        self, ids: torch.Tensor, past_kv: torch.Tensor | None, logits_to_keep: int, dropped: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._forward(ids, past_kv, logits_to_keep, dropped)
        return out.logits[0].float().cpu(), self._cache_tensor(out)

    def _forward(
        self,
        ids: torch.Tensor,
        past_kv: torch.Tensor | Any | None,  # kvcast's layout, or a DynamicCache to extend
        logits_to_keep: int,
        dropped: int,
        output_attentions: bool = False,
    ) -> Any:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        if past_kv is not None and not isinstance(past_kv, torch.Tensor):
            cache, t0 = past_kv, past_kv.get_seq_length()  # a DynamicCache, already on the device
        elif past_kv is not None and past_kv.shape[2] > 0:
            layers = [
                (
                    past_kv[i, 0].transpose(0, 1)[None].contiguous().to(device),
                    past_kv[i, 1].transpose(0, 1)[None].contiguous().to(device),
                )
                for i in range(self.n_layers)
            ]
            cache = DynamicCache(ddp_cache_data=layers, config=self.model.config)
            t0 = past_kv.shape[2]
        else:
            cache, t0 = DynamicCache(config=self.model.config), 0
        T = ids.numel()
        # positions (RoPE) continue where the full context ended; the causal mask follows the
        # cache's own length (transformers derives it from the cache, not from position_ids)
        start = t0 + dropped
        return self.model(
            input_ids=ids[None].to(device),
            position_ids=torch.arange(start, start + T, device=device)[None],
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_attentions=output_attentions,
            **{self._cache_kw: cache},
        )

    @staticmethod
    def _out_cache(out: Any) -> Any:
        """The forward's DynamicCache (the cache and the new tokens')."""
        cache = getattr(out, "cache", None)
        return out.past_key_values if cache is None else cache

    def _cache_tensor(self, out: Any) -> torch.Tensor:
        """The forward's cache in kvcast's layout [L, 2, T_total, H, D] (on the CPU)."""
        kv = torch.stack(
            [
                torch.stack([layer.keys[0], layer.values[0]]).transpose(1, 2)
                for layer in self._out_cache(out).layers
            ]
        )  # [L, 2, T_total, H, D]
        return kv.cpu()

    def attention_received(self, token_ids: Sequence[int], piece: int = 256) -> torch.Tensor:
        """H2O's accumulated attention ``[L, T, H_kv]`` (see `LoadedModel`): the context is run
        in pieces of `piece` tokens with eager attention (the only implementation that returns
        its weights), each piece's queries adding their weights to every key they see."""
        ids = self._check_ids(token_ids)
        self._check_fits(ids.numel())
        T, group = ids.numel(), self.n_heads // self.n_kv_heads
        scores = torch.zeros(self.n_layers, T, self.n_kv_heads, dtype=torch.float64)
        before = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            cache: Any = None  # the DynamicCache, kept on the device from piece to piece
            with torch.inference_mode():
                for s in range(0, T, piece):
                    out = self._forward(ids[s : s + piece], cache, 1, 0, output_attentions=True)
                    cache = self._out_cache(out)
                    seen = min(s + piece, T)
                    for layer, att in enumerate(out.attentions):  # [1, heads, new, seen]
                        per_key = att[0].double().sum(dim=1)  # [heads, seen]
                        per_kv_head = per_key.view(self.n_kv_heads, group, seen).sum(dim=1)
                        scores[layer, :seen] += per_kv_head.T.cpu()
        finally:
            self.model.set_attn_implementation(before)
        return scores


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on the CLI's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_transformers(name: str, *, dtype: torch.dtype = torch.float32) -> TransformersModel:
    """A transformers causal LM from a local folder (with config.json) or a hub id."""
    quiet_transformers()
    path = Path(name).expanduser()
    local = path.is_dir()
    if local and not (path / "config.json").is_file():
        raise InputError(f"{path}: a folder, but not a transformers model (no config.json in it)")
    if local:
        return _load(str(path), path.name, dtype, local_files_only=True)
    try:  # a hub id already in the local Hugging Face cache loads without the network
        return _load(name, name, dtype, local_files_only=True)
    except InputError:
        pass
    reason = hub_unreachable()
    if reason:
        raise InputError(
            f"model {name!r}: not a local folder, not in the Hugging Face cache, and the hub is "
            f"unreachable ({reason}); pass a local model folder, 'smollm2' or a llama2.c .bin"
        )
    return _load(name, name, dtype, local_files_only=False)


def hub_unreachable(timeout_s: float = 3.0) -> str:
    """Why the Hugging Face hub cannot be reached ("" when it can): offline mode or no route."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


def _load(where: str, model_id: str, dtype: torch.dtype, *, local_files_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, local_files_only=local_files_only
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"model {where!r}: could not load a transformers causal LM ({exc})"
        ) from exc
    return TransformersModel(model, tok, model_id)


def load_gguf(path: Path, *, dtype: torch.dtype = torch.float32) -> TransformersModel:
    """A GGUF causal LM file through transformers' GGUF reader (weights dequantised to `dtype`)."""
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"{path}: could not load as a GGUF causal LM ({exc})") from exc
    return TransformersModel(model, tok, path.stem, source="gguf")
