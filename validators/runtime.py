"""A model in transformers with a RoPE spec applied: load, and swap the rope in place without reloading weights.

transformers (≥ 4.45) computes cos/sin once per forward in `model.model.rotary_emb` and hands them to every layer,
so replacing that one module changes the rope of the whole model. `set_rope(model, spec)` puts a `SpecRotary` there
that reproduces transformers' own rotary modules for every rope type — float32 position math (pitfall 14: bf16
positions lose precision), cos and sin multiplied by the attention factor, dynamic NTK recomputed as the cached
length grows (and reset below the original length), LongRoPE switching between short and long factors on the
current length — so a swapped spec gives the logits of the HF export of that spec. A swap costs one float64
`inv_freq` of rotary_dim/2 values: cheap enough for the LongRoPE search to do it per candidate.

CUDA when present (bf16, SDPA), else CPU (f32).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.archs import window_to_lift

_ORIGINAL = "_ropeconvert_original_rotary"  # where set_rope keeps the module the model was loaded with


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA (bf16) when available, else CPU (f32); an explicit device keeps the same dtype rule."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError("--device cuda was asked for but CUDA is not available", "drop --device or use cpu")
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


class SpecRotary(nn.Module):
    """cos/sin for `spec` (None = the plain base rope), computed exactly like transformers' rotary modules."""

    def __init__(self, spec: RopeSpec | None, base: BaseRope, device: torch.device | str = "cpu"):
        super().__init__()
        self.spec, self.base = spec, base
        self.attention_scaling = 1.0 if spec is None else float(spec.attention_factor)
        self.original = base.original_context
        self.cached_len = self.original  # dynamic NTK: transformers' max_seq_len_cached
        self._device = torch.device(device)
        self._tables: dict[int | None, torch.Tensor] = {}  # key: None (static), or a seq_len bucket
        self.inv_freq = self._inv(None)

    def _inv(self, seq_len: int | None) -> torch.Tensor:
        if seq_len not in self._tables:
            values = self.base.inv_freq() if self.spec is None else self.spec.inv_freq(seq_len)
            # float32 like the buffers transformers keeps; the float64 math happens once, here
            self._tables[seq_len] = torch.tensor(np.asarray(values, dtype=np.float32), device=self._device)
        return self._tables[seq_len]

    def current_inv_freq(self, seq_len: int) -> torch.Tensor:
        spec = self.spec
        if spec is None or (spec.dynamic_factor is None and spec.short_factors is None):
            return self.inv_freq
        if spec.dynamic_factor is not None:
            # transformers' dynamic_frequency_update: the table only grows with the longest length seen, and
            # resets to the original once a short input comes after a long one.
            if seq_len > self.cached_len:
                self.cached_len = seq_len
            elif seq_len < self.original and self.cached_len > self.original:
                self.cached_len = self.original
            if self.cached_len <= self.original:
                return self._inv(None)
            self._tables.pop(self.cached_len - 1, None)  # keep the table small while decoding token by token
            return self._inv(self.cached_len)
        # LongRoPE: long factors once the current length passes the original one, short factors otherwise
        return self._inv(self.original + 1) if seq_len > self.original else self._inv(None)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None):
        seq_len = int(position_ids.max()) + 1
        inv = self.current_inv_freq(seq_len).to(x.device)
        freqs = position_ids[..., None].float() * inv  # float32 position math even under bf16
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotary_owner(model: nn.Module) -> nn.Module:
    """The module that holds `rotary_emb` (the decoder stack under the LM head)."""
    inner = getattr(model, "base_model", model)
    if isinstance(getattr(inner, "rotary_emb", None), nn.Module):
        return inner
    raise UnsupportedError(f"{type(model).__name__} has no shared rotary embedding (model.model.rotary_emb)",
                           "use a Llama, Mistral, Qwen2/3 or Phi-3 family model")


def base_rope_of(model: nn.Module) -> BaseRope:
    from ropeconvert.formats.hf_config import base_rope_from_config

    return base_rope_from_config(model.config.to_dict())


def set_rope(model: nn.Module, spec: RopeSpec | None, base: BaseRope | None = None) -> SpecRotary:
    """Give a loaded model the rope `spec` (None = the plain base rope) in place; weights are untouched.

    `base` defaults to spec.base, or (spec None) to the trained rope read from the model's config — pass it
    explicitly for a model loaded from a static-NTK export, whose config carries the raised theta."""
    owner = rotary_owner(model)
    if not hasattr(owner, _ORIGINAL):
        setattr(owner, _ORIGINAL, owner.rotary_emb)  # plain attribute on purpose: not a registered submodule
    base = base or (spec.base if spec is not None else base_rope_of(model))
    device = next(model.parameters()).device
    owner.rotary_emb = SpecRotary(spec, base, device)
    return owner.rotary_emb


def restore_rope(model: nn.Module) -> None:
    """Put back the rotary module the model was loaded with."""
    owner = rotary_owner(model)
    if hasattr(owner, _ORIGINAL):
        owner.rotary_emb = getattr(owner, _ORIGINAL)
        delattr(owner, _ORIGINAL)


@dataclass
class Runtime:
    """A loaded transformers model plus what the validators need to know about it."""

    model: nn.Module
    tokenizer: object
    path: Path
    device: torch.device
    dtype: torch.dtype
    spec: RopeSpec | None  # the rope in force: the export's own, or the one swapped in
    base: BaseRope
    notes: list[str] = field(default_factory=list)

    @property
    def bos_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def eos_ids(self) -> set[int]:
        ids = {getattr(self.tokenizer, "eos_token_id", None)}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
        return {i for i in ids if i is not None}

    kind = "transformers"

    @property
    def scorer(self) -> nn.Module:
        """What perplexity.sweep takes: the model itself (its hidden states feed the chunked head)."""
        return self.model

    def greedy(self, input_ids: list[int], max_new_tokens: int) -> list[int]:
        from ropeconvert.validators.generate import greedy

        return greedy(self.model, input_ids, max_new_tokens, self.eos_ids)

    def describe(self) -> dict:
        import transformers

        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "torch": torch.__version__, "transformers": transformers.__version__}

    def close(self) -> None:
        """Free the weights before the next model loads (validators keep one model in memory at a time)."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load(model: str | Path, spec: RopeSpec | None = None, *, device: str | None = None, progress: bool = False,
         original_context: int | None = None) -> Runtime:
    """Load an HF export (or any source `resolve` knows: alias, Hub id, HF dir, GGUF dequantized) in stock
    transformers; with `spec`, swap that rope in afterwards (base + spec without writing an export)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()  # --quiet: its "Loading
    # weights" bar too, so an error after the load is still the only line

    from ropeconvert.formats.hf_config import base_rope_from_config, spec_from_hf_config
    from ropeconvert.formats.source import hf_checkpoint, resolve
    from ropeconvert.formats.tensors import require_safetensors

    path = hf_checkpoint(resolve(str(model), progress=progress), progress=progress)
    dev, dtype = pick_device(device)
    notes: list[str] = []
    try:
        config = _read_config(path)
        require_safetensors(path)  # before any library sees the directory: .bin/.pt pickles never reach torch.load
        base = base_rope_from_config(config, original_context)
        own_spec = spec_from_hf_config(config, original_context)
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {}
        if window := window_to_lift(config):
            kwargs["sliding_window"] = None
            notes.append(f"sliding window ({window}) disabled for long-context evaluation")
        if "dpe" in config:  # a DPE / Self-Extend export: its own attention (registered by `import ropeconvert`)
            from ropeconvert.validators.dpe_register import ATTN_NAME as attn
        else:
            attn = "sdpa"
        if dev.type == "cuda" and torch.cuda.device_count() > 1:  # a model bigger than one GPU (a Ray worker
            kwargs["device_map"] = "balanced"  # with --gpus-per-worker > 1 sees several): accelerate spreads it
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn,
                                                        use_safetensors=True, **kwargs)
    except OSError as e:
        raise InputError(f"cannot load {path} in transformers ({' '.join(str(e).split())[:160]})",
                         "pass an HF model directory with config.json, tokenizer and safetensors weights") from None
    (hf_model if "device_map" in kwargs else hf_model.to(dev)).eval()
    runtime = Runtime(hf_model, tokenizer, path, dev, dtype, own_spec, base, notes)
    if spec is not None:
        set_rope(hf_model, spec)
        runtime.spec = spec
    return runtime


def _read_config(path: Path) -> dict:
    from ropeconvert.formats.source import read_config

    return read_config(path)
