"""THE architecture table: for each supported family, its HF model types, GGUF arch, HF class, Q/K permute rule
and which per-pair rope tensors its llama.cpp graph loads (ecosystem.md §2.3; checked against the llama.cpp tree
vendored in llama-cpp-python 0.3.36, src/models/{llama,qwen2,qwen3,phi3,gemma3}.cpp).

Every other module asks this table; none keeps its own list of architectures.
"""
from __future__ import annotations

from dataclasses import dataclass

from ropeconvert.errors import UnsupportedError


@dataclass(frozen=True)
class Arch:
    gguf: str  # GGUF general.architecture
    model_types: tuple[str, ...]  # HF config model_type values written to / read from this arch (first = written)
    hf_class: str  # the HF class a GGUF of this arch is read back as
    permute_qk: bool  # llama.cpp runs the NORM (interleaved-pair) rope: Q/K rows are permuted from HF's rotate-half
    per_pair: str | None  # how the graph takes per-pair divisors: "rope_freqs", "long_short" (LongRoPE pair), None
    honours: str  # the methods a GGUF of this arch can carry, for error messages
    # its config keeps a top-level original_max_position_embeddings whatever the rope (mistral.rs's phi3 refuses a
    # config without it; mlx-lm's phi3 then assumes 4096)
    keeps_original: bool = False
    # the HF rope types its transformers config class accepts (None: any); a plain rope_theta is always accepted
    hf_rope_types: tuple[str, ...] | None = None
    # ropeconvert's DPE / Self-Extend attention (validators/dpe_attention.py) runs its q_proj/k_proj layout
    position_map: bool = True
    # GGUF stores RMSNorm weights plus this (Gemma's norm multiplies by 1 + w; llama.cpp's converter adds the 1)
    norm_shift: float = 0.0
    # sliding-window layers keep their own rope (Gemma 3: rope_local_base_freq, never scaled); only the global
    # (full-attention) layers take the extension — formats/gemma3.py holds the per-layer-type rules
    local_rope: bool = False
    # GGUF block tensors whose HF module differs from the llama layout (formats/gguf_read.py `_LAYER`)
    layer_names: tuple[tuple[str, str], ...] = ()

    @property
    def model_type(self) -> str:
        return self.model_types[0]


ARCHS: dict[str, Arch] = {a.gguf: a for a in (
    Arch("llama", ("llama", "mistral"), "LlamaForCausalLM", permute_qk=True, per_pair="rope_freqs",
         honours="linear, ntk, yarn, longrope, llama3, dynamic --static"),
    Arch("qwen2", ("qwen2",), "Qwen2ForCausalLM", permute_qk=False, per_pair=None,
         honours="linear, ntk, yarn (default betas 32/1), dynamic --static"),
    Arch("qwen3", ("qwen3",), "Qwen3ForCausalLM", permute_qk=False, per_pair=None,
         honours="linear, ntk, yarn (default betas 32/1), dynamic --static"),
    Arch("phi3", ("phi3",), "Phi3ForCausalLM", permute_qk=False, per_pair="long_short",
         honours="linear, ntk, yarn, longrope, llama3, dynamic --static", keeps_original=True,
         hf_rope_types=("longrope",),  # Phi3Config validates rope_scaling's type (transformers 4.57 and 5.24)
         position_map=False),  # a fused qkv_proj
    # src/models/gemma3.cpp passes no factor tensor to ggml_rope_ext, and its sliding layers take
    # rope.freq_base_swa with freq_scale 1 but the same attn_factor: see formats/gemma3.py
    Arch("gemma3", ("gemma3_text",), "Gemma3ForCausalLM", permute_qk=False, per_pair=None,
         honours="linear, ntk, yarn (default betas 32/1 and attention factor), dynamic --static",
         position_map=False,  # q_norm/k_norm before the rope and sliding layers: the DPE attention runs neither
         norm_shift=1.0, local_rope=True,
         layer_names=(("ffn_norm", "pre_feedforward_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                      ("post_ffw_norm", "post_feedforward_layernorm"))),
)}
MODEL_TYPES: dict[str, Arch] = {mt: a for a in ARCHS.values() for mt in a.model_types}
FAMILIES = "Llama, Mistral, Qwen2/3, Phi-3, Gemma 3, SmolLM families"


def for_model_type(model_type: object, *, purpose: str = "") -> Arch:
    """The arch an HF config's model_type maps to; UnsupportedError naming what is supported otherwise."""
    if model_type not in MODEL_TYPES:
        what = f"{purpose} does not support" if purpose else "unsupported architecture"
        raise UnsupportedError(f"{what} model_type={model_type!r}",
                               f"supported: {', '.join(MODEL_TYPES)} ({FAMILIES})")
    return MODEL_TYPES[model_type]  # type: ignore[index]


def keeps_local_rope(model_type: object) -> bool:
    """The HF model type's sliding layers keep a rope of their own (Gemma 3: formats/gemma3.py)."""
    arch = MODEL_TYPES.get(model_type)  # type: ignore[arg-type]
    return arch is not None and arch.local_rope


def window_to_lift(config: dict) -> int | None:
    """The sliding window a long-context evaluation lifts (pitfall 14: Mistral's would hide everything past 4k from
    the test), or None: none set, or Gemma 3's, which is part of the model (its sliding layers keep their rope)."""
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return None if not window or keeps_local_rope(config.get("model_type")) else int(window)


def for_gguf(arch: object) -> Arch:
    if arch not in ARCHS:
        raise UnsupportedError(f"unsupported GGUF architecture {arch!r}", f"supported: {', '.join(ARCHS)}")
    return ARCHS[arch]  # type: ignore[index]
